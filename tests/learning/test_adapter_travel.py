"""Saved adapters travel: they name their base by its hub id, carry their head's labels and a model card,
and load offline with plain transformers / PEFT from the Hugging Face cache that ``nebula setup`` fills.

The loads run in a fresh interpreter: huggingface_hub reads ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` when it is
imported, so a temporary hub cache cannot be switched on inside this process. The child sees only that cache
and an empty ``NEBULA_CACHE``: nothing of Nebula's is needed to load the adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nebula.common.config import NebulaConfig
from nebula.learning.assets import BUILTIN_MODELS, MANIFEST, install_in_hub_cache, prepare_all, resolve_model

HUB_ID = BUILTIN_MODELS["minilm-l3"].upstream
NAMES = ("negative", "neutral", "positive")
TEXTS = ["what a lovely morning", "the flight was delayed again", "ok", "I can't believe they cancelled the show!!"]

# Run in the child: load both ways, print the logits and the labels as JSON.
_LOAD = """
import json, sys
import torch
from peft import AutoPeftModelForSequenceClassification, PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder, texts = sys.argv[1], json.loads(sys.argv[2])
head = json.load(open(f"{folder}/nebula.json"))["head"]
base_id = json.load(open(f"{folder}/adapter_config.json"))["base_model_name_or_path"]
tokenizer = AutoTokenizer.from_pretrained(folder)
enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
auto = AutoPeftModelForSequenceClassification.from_pretrained(folder, **head).eval()
peft = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_id, **head), folder).eval()
out = {}
with torch.no_grad():
    for name, model in (("auto", auto), ("peft", peft)):
        config = model.base_model.model.config
        out[name] = {
            "logits": model(**enc).logits.tolist(),
            "num_labels": config.num_labels,
            "id2label": {str(k): v for k, v in config.id2label.items()},
        }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(adapter folder, the saved learner's logits on TEXTS): minilm-l3, 3 named labels, a non-trivial adapter."""
    import torch

    from nebula.learning.models import LoraSpec, load_learner, load_trainable_state, save_adapter

    learner = load_learner("minilm-l3", num_labels=3, lora=LoraSpec(), seed=0)
    try:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # PEFT starts LoRA B at zero; random B and head make the adapter matter
            for name, param in learner.model.named_parameters():
                if "lora_B" in name or (param.requires_grad and "classifier" in name and name.endswith("weight")):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        folder = save_adapter(
            learner,
            tmp_path_factory.mktemp("adapter") / "client-1",
            label_names=NAMES,
            config=NebulaConfig(),
            role="client",
            metrics={"acc_global": 0.5},
        )
        learner.model.eval()
        enc = learner.tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            logits = learner.model(**enc).logits.numpy()
    finally:
        load_trainable_state(learner.model, learner.init_state)  # the process's cached learner, as others expect it
    return folder, logits


def test_a_saved_adapter_loads_offline_anywhere_with_its_labels(saved, tmp_path):
    folder, expected = saved
    # (a) the base by its portable id; the local build recorded beside it
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    meta = json.loads((folder / "nebula.json").read_text())
    local = resolve_model("minilm-l3")
    assert meta["base"]["builtin"] == "minilm-l3" and meta["base"]["local_folder"] == local
    assert len(meta["base"]["manifest_sha256"]) == 64
    assert meta["head"] == {
        "num_labels": 3,
        "id2label": {"0": "negative", "1": "neutral", "2": "positive"},
        "label2id": {"negative": 0, "neutral": 1, "positive": 2},
    }
    assert not (folder / "config.json").exists()  # one would make transformers take the folder for a full model

    # (b), (c) in a fresh interpreter, offline, on a hub cache holding only the installed builtin
    hub = tmp_path / "hub"
    install_in_hub_cache(BUILTIN_MODELS["minilm-l3"], local, hub_cache=hub)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub),
        "HF_HOME": str(tmp_path / "hf-home"),
        "NEBULA_CACHE": str(tmp_path / "no-nebula-cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, str(folder), json.dumps(TEXTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for how in ("auto", "peft"):
        assert loaded[how]["num_labels"] == 3
        assert loaded[how]["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
        np.testing.assert_allclose(np.asarray(loaded[how]["logits"]), expected, atol=1e-5, err_msg=how)

    # (d) the model card
    card = (folder / "README.md").read_text()
    assert f"base_model: {HUB_ID}" in card and "library_name: peft" in card
    for word in (*NAMES, "`tweets`", "5 clients, 3 rounds", "class-contrast", "never left the device", "acc_global"):
        assert word in card, word


def test_export_resolves_the_hub_id_to_the_builtin(saved):
    from nebula.deploy.export.merge import resolve_base

    folder, _ = saved
    assert resolve_base(folder) == resolve_model("minilm-l3")


def test_user_models_keep_their_name_and_unknown_labels_are_generic(tiny_bert, tmp_path):
    from transformers import BertTokenizerFast

    from nebula.learning.models import Learner, head_config, save_adapter

    model_dir = tmp_path / "my-model"
    tiny_bert().save_pretrained(model_dir)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(45))]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model_dir)

    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(model_dir)
    peft = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, target_modules=["query", "value"]))
    learner = Learner(str(model_dir), peft, AutoTokenizer.from_pretrained(model_dir), {})
    folder = save_adapter(learner, tmp_path / "adapter")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(model_dir)
    meta = json.loads((folder / "nebula.json").read_text())
    assert meta["head"]["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    assert "builtin" not in meta["base"]
    assert "base_model:" not in (folder / "README.md").read_text()  # a local folder is no hub id
    with pytest.raises(ValueError, match="distinct label names"):
        head_config(["a", "a", "b"], 3)


def test_setup_installs_builtins_in_the_hub_cache(tmp_path):
    from huggingface_hub import try_to_load_from_cache

    hub = tmp_path / "hub"
    messages: list[str] = []
    folder = Path(prepare_all(names=("minilm-l3",), hub_cache=hub, progress=messages.append)["minilm-l3"])
    repo = hub / "models--sentence-transformers--paraphrase-MiniLM-L3-v2"
    revision = (repo / "refs" / "main").read_text()
    assert len(revision) == 40 and "\n" not in revision
    for name in ("config.json", "model.safetensors", "tokenizer.json", MANIFEST):
        cached = try_to_load_from_cache(HUB_ID, name, cache_dir=str(hub))
        assert isinstance(cached, str), name
        assert Path(cached).read_bytes() == (folder / name).read_bytes()
        assert Path(cached).resolve().parent == (repo / "blobs").resolve()  # self-contained: blobs, not links out
    assert any("Hugging Face cache" in m for m in messages)
    # Idempotent; a real download's refs/main is left alone
    prepare_all(names=("minilm-l3",), hub_cache=hub, progress=lambda _: None)
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == [revision]
    real = repo / "snapshots" / ("f" * 40)
    real.mkdir()
    (real / "config.json").write_text("{}")
    (repo / "refs" / "main").write_text("f" * 40)
    entry = install_in_hub_cache(BUILTIN_MODELS["minilm-l3"], folder, hub_cache=hub)
    assert (repo / "refs" / "main").read_text() == "f" * 40 and not entry.is_main and entry.revision == revision
