"""Fixtures shared across the test packages.

* ``_task_identity`` (every test): Flower builds messages only inside a task; the test process gets one.
* ``tiny_bert``: a factory for a tiny randomly initialised BERT classifier (no files, fast).
* The edge-export fixtures (deploy, cli and the client's edge runtime): one adapter on the real MiniLM-L3,
  exported once per session; torch and the models load only when a test asks for them.

The adapter is synthetic: seeded random LoRA B matrices (std 0.05; PEFT initialises them to zero,
which would make the merge a no-op) and a seeded random head (std 0.3). A few steps of real
training on tweets predict the majority class for all 40 test tweets, which would make every
agreement figure trivially 100%; the random head spreads the predictions over the classes, with
margins from 0.02 to several logits, so rounding errors can show. Building it takes no training time.
"""

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from nebula.common.data import load_dataset, split_dataset

MAX_LENGTH = 64


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture
def tiny_bert():
    """``make(seed=0, **config)``: a seeded BertForSequenceClassification, vocabulary 50, hidden 16, 3 labels;
    ``config`` adds further BertConfig fields (dropout, pad token, ...)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    def make(seed: int = 0, **config):
        torch.manual_seed(seed)
        sizes = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        return BertForSequenceClassification(BertConfig(**sizes, num_labels=3, **config))

    return make


@pytest.fixture(scope="session")
def tweets():
    data = load_dataset("tweets")
    test, _, _ = split_dataset(len(data), test=40, public=0, seed=0)
    return {"test": [data.texts[i] for i in test], "label_names": data.label_names}


@pytest.fixture(scope="session")
def adapter_and_peft_logits(tmp_path_factory, tweets):
    """(adapter folder, PEFT logits on the 40 test tweets before merging)."""
    import torch

    from nebula.learning.models import LoraSpec, load_learner, load_trainable_state, save_adapter
    from nebula.learning.training import encode, predict_logits

    learner = load_learner("minilm-l3", num_labels=3, lora=LoraSpec(), seed=0)
    try:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in learner.model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
                elif param.requires_grad and "classifier" in name and name.endswith("weight"):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        folder = save_adapter(learner, tmp_path_factory.mktemp("adapter") / "student")
        peft_logits = predict_logits(learner.model, encode(learner.tokenizer, tweets["test"], max_length=MAX_LENGTH))
    finally:
        # load_learner caches per process: leave the shared learner as other tests expect it.
        load_trainable_state(learner.model, learner.init_state)
    return folder, peft_logits


@pytest.fixture(scope="session")
def adapter_dir(adapter_and_peft_logits):
    return adapter_and_peft_logits[0]


@pytest.fixture(scope="session")
def merged_logits(adapter_dir, tweets) -> np.ndarray:
    """Logits (40, 3) of the merged PyTorch model: the reference every export is held to."""
    from nebula.deploy.export.merge import load_adapter_model
    from nebula.learning.training import encode, predict_logits

    model, tokenizer, _, _ = load_adapter_model(adapter_dir)
    return predict_logits(model, encode(tokenizer, tweets["test"], max_length=MAX_LENGTH))


def _export(tmp_path_factory, adapter_dir, name, **kw):
    from nebula.deploy.export.export import ExportConfig, export_adapter

    out = tmp_path_factory.mktemp("exports") / name
    export_adapter(ExportConfig(adapter_dir=str(adapter_dir), out=str(out), max_length=MAX_LENGTH, **kw))
    return out


@pytest.fixture(scope="session")
def fp32_package(tmp_path_factory, adapter_dir):
    return _export(tmp_path_factory, adapter_dir, "fp32", target="fp32", labels=("neg", "neu", "pos"))


@pytest.fixture(scope="session")
def int8_package(tmp_path_factory, adapter_dir):
    return _export(tmp_path_factory, adapter_dir, "int8", target="cpu-int8", labels=("neg", "neu", "pos"))


@pytest.fixture(scope="session")
def pruned_corpus(tmp_path_factory, tweets):
    """A .txt corpus: the first 20 test tweets, one per line."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(t.replace("\n", " ") for t in tweets["test"][:20]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pruned_package(tmp_path_factory, adapter_dir, pruned_corpus):
    """fp32 with the vocabulary pruned to the corpus' tokens: small, so also the one the corruption tests copy."""
    return _export(
        tmp_path_factory,
        adapter_dir,
        "pruned",
        target="fp32",
        prune_vocab_from=str(pruned_corpus),
        labels=("neg", "neu", "pos"),
    )
