"""Base models with a LoRA adapter, loaded once per process.

A node may host several logical learners on the same frozen base model (in a simulation,
one Ray actor serves many virtual clients). The frozen weights are shared; what differs
between learners is only the trainable state (LoRA matrices and the classification head),
which :func:`trainable_state` / :func:`load_trainable_state` swap in and out.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from nebula.common.config import NebulaConfig
from nebula.common.run_folder import CHECKPOINT_NAMES, checkpoint_file
from nebula.learning.assets import resolve_model

log = logging.getLogger(__name__)

# LoRA targets per architecture; other architectures fall back to
# PEFT's own per-model defaults.
LORA_TARGETS = {
    "bert": ["query", "value"],
    "mpnet": ["q", "v"],
    "llama": ["q_proj", "v_proj"],
}


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0


@dataclass
class Learner:
    """A PEFT model, its tokenizer and the trainable state it started from."""

    name: str
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    init_state: dict[str, torch.Tensor]

    @property
    def num_trainable(self) -> int:
        return sum(t.numel() for t in self.init_state.values())


_CACHE: dict[tuple, Learner] = {}


def load_learner(
    name_or_path: str, *, num_labels: int, lora: LoraSpec, seed: int, cache_dir: str | Path | None = None
) -> Learner:
    """Load ``name_or_path`` with a fresh LoRA adapter, or return this process's cached copy.

    The adapter and head are initialised from ``seed``, so every process that asks for the
    same (model, labels, LoRA, seed) starts from identical weights. Callers that need a
    fresh learner must call ``load_trainable_state(learner.model, learner.init_state)``.
    """
    key = (name_or_path, num_labels, lora, seed, str(cache_dir or ""))
    if key in _CACHE:
        return _CACHE[key]
    path = resolve_model(name_or_path, cache_dir=Path(cache_dir) if cache_dir else None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    # The load report lists the new classification head as "missing": expected here, noise in a run.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=LORA_TARGETS.get(base.config.model_type),
    )
    model = get_peft_model(base, config)
    learner = Learner(name_or_path, model, tokenizer, trainable_state(model))
    log.info("loaded %s (%d trainable parameters)", name_or_path, learner.num_trainable)
    _CACHE[key] = learner
    return learner


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train (LoRA matrices and the classifier head)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put ``state`` into the trainable parameters; names and shapes must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"trainable state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} != model's {tuple(params[name].shape)}")
            params[name].copy_(tensor)


def save_checkpoint(folder: str | Path, teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> None:
    """Write ``folder/teacher.pt`` and ``folder/student.pt`` (trainable states), each to a hidden
    temporary file first and then renamed, so a crash leaves the old file or the new one, never half."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, state in zip(CHECKPOINT_NAMES, (teacher, student)):
        tmp = folder / f".{name}.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(checkpoint_file(folder, name))


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(teacher, student)`` trainable states from a :func:`save_checkpoint` folder.

    Raises FileNotFoundError naming a missing file and ValueError naming an unreadable one.
    """
    states = []
    for name in CHECKPOINT_NAMES:
        path = checkpoint_file(folder, name)
        if not path.is_file():
            raise FileNotFoundError(f"no model state {path}")
        try:
            states.append(torch.load(path, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise ValueError(f"cannot read the model state {path}: {exc}") from exc
    return states[0], states[1]


def state_nbytes(state: dict[str, torch.Tensor], *, bytes_per_value: int = 4) -> int:
    """Bytes needed to send ``state`` (what FedAvg of adapters would transmit)."""
    return sum(t.numel() for t in state.values()) * bytes_per_value


def save_adapter(learner: Learner, folder: str | Path) -> Path:
    """Save the adapter where ``PeftModel.from_pretrained(base, folder)`` loads it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    learner.model.save_pretrained(folder)
    learner.tokenizer.save_pretrained(folder)
    return folder


def learner_for(config: NebulaConfig, model_name: str, num_classes: int) -> Learner:
    """A LoRA learner of ``model_name`` for ``num_classes`` as the federation configures every node's."""
    m = config.model
    return load_learner(
        model_name,
        num_labels=num_classes,
        lora=LoraSpec(m.lora_r, m.lora_alpha, m.lora_dropout),
        seed=config.data.seed,
        cache_dir=m.cache_dir or None,
    )
