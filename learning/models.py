"""Base models with a LoRA adapter, loaded once per process.

A node may host several logical learners on the same frozen base model (in a simulation,
one Ray actor serves many virtual clients). The frozen weights are shared; what differs
between learners is only the trainable state (LoRA matrices and the classification head),
which :func:`trainable_state` / :func:`load_trainable_state` swap in and out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from nebula.common.config import NebulaConfig
from nebula.common.run_folder import CHECKPOINT_NAMES, checkpoint_file
from nebula.learning.assets import BUILD_NOTES, BUILTIN_MODELS, MANIFEST, resolve_model

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
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per client per round otherwise
    try:
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=LORA_TARGETS.get(base.config.model_type),
    )
    with quiet_peft():
        model = get_peft_model(base, config)
    learner = Learner(name_or_path, model, tokenizer, trainable_state(model))
    log.debug("loaded %s (%d trainable parameters)", name_or_path, learner.num_trainable)
    _CACHE[key] = learner
    return learner


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Around PEFT's model building and loading: PEFT 0.x reads transformers' deprecated
    ``is_gradient_checkpointing``, and that FutureWarning is theirs, not the user's (it printed on every client's
    every round, and on every export)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


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


ADAPTER_META = "nebula.json"
_META_FORMAT = 1

# What left the devices, per role of a saved adapter (the model card's "Data" section).
_PROVENANCE = {
    "client": (
        "A client's own adapter, trained on that client's private data on its device; the adapter and the data "
        "never left the device. In the federation the client sent only soft predictions (logits) on public, "
        "unlabeled inputs."
    ),
    "teacher": (
        "The server-side teacher. Clients sent only soft predictions (logits) on public, unlabeled inputs; their "
        "private data and adapters never left their devices. The teacher was trained on the aggregated "
        "predictions (the consensus) on those public inputs."
    ),
    "global-student": (
        "The global student, distilled from the teacher's predictions on public, unlabeled inputs. Clients sent "
        "only soft predictions (logits) on public inputs; their private data and adapters never left their devices."
    ),
    "offline-teacher": (
        "A teacher trained after the federation on the consensus its ledger recorded: aggregated soft predictions "
        "of the clients on public, unlabeled inputs. No private data or client adapter left a device."
    ),
}


_TITLES = {
    "client": "Client adapter",
    "teacher": "Teacher",
    "global-student": "Global student",
    "offline-teacher": "Offline teacher",
}


def portable_base_id(name_or_path: str) -> str:
    """The name a saved adapter gives its base: a builtin's hub id (``BuiltinModel.upstream``), anything
    else (a hub id, a folder) as the user named it."""
    builtin = BUILTIN_MODELS.get(name_or_path)
    return builtin.upstream if builtin is not None else name_or_path


def head_config(label_names: Sequence[str] | None, num_labels: int) -> dict:
    """``num_labels``, ``id2label``, ``label2id`` of a classification head: the keyword arguments
    ``from_pretrained`` needs to rebuild it (``LABEL_i`` where the names are unknown)."""
    names = [str(n) for n in label_names] if label_names is not None else [f"LABEL_{i}" for i in range(num_labels)]
    if len(names) != num_labels or len(set(names)) != num_labels:
        raise ValueError(f"{num_labels} distinct label names needed, got {names}")
    return {
        "num_labels": num_labels,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def save_adapter(
    learner: Learner,
    folder: str | Path,
    *,
    label_names: Sequence[str] | None = None,
    config: NebulaConfig | None = None,
    role: str = "adapter",
    metrics: Mapping[str, float] | None = None,
    note: str = "",
) -> Path:
    """Save the adapter so that it loads on any machine, without Nebula.

    ``folder`` gets PEFT's files (``adapter_config.json``, whose ``base_model_name_or_path`` is the
    portable :func:`portable_base_id`, and ``adapter_model.safetensors``), the tokenizer,
    :data:`ADAPTER_META` (``nebula.json``: the head's ``num_labels``/``id2label``/``label2id`` and, for a
    builtin, the local build: folder, builtin name, manifest sha256) and a model card ``README.md``.

    The head is not in a ``config.json``: PEFT's ``AutoPeftModel`` never reads one from the adapter
    folder (it builds the base from the base id and the caller's keyword arguments), and one there makes
    transformers take the folder for a full model. Load with the head's keyword arguments::

        head = json.load(open(folder / "nebula.json"))["head"]
        AutoPeftModelForSequenceClassification.from_pretrained(folder, **head)
        PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_id, **head), folder)

    Offline, a builtin's hub id resolves in the Hugging Face cache that ``nebula setup`` fills
    (:func:`nebula.learning.assets.install_in_hub_cache`).

    Parameters
    ----------
    label_names : sequence of str, optional
        The dataset's class names in label order; default ``LABEL_0``... (unknown).
    config : NebulaConfig, optional
        The federation's configuration, for the model card (dataset, clients, rounds, aggregation).
    role : str
        ``client``, ``teacher``, ``global-student`` or ``offline-teacher``: says in the card what left the devices.
    metrics : mapping, optional
        Metrics to report in the card (name -> value).
    note : str
        One more sentence for the card (e.g. the unlearning request the state comes from).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = learner.model
    learner.model.save_pretrained(folder)
    learner.tokenizer.save_pretrained(folder)
    peft_config = model.peft_config[model.active_adapter]
    local = str(peft_config.base_model_name_or_path or "")
    base_id = portable_base_id(learner.name)
    _point_at_base(folder / "adapter_config.json", base_id)
    head = head_config(label_names, int(model.base_model.model.config.num_labels))
    base = _base_record(learner.name, base_id, local)
    meta = {"format": _META_FORMAT, "base": base, "head": head, "role": role}
    if config is not None:
        meta["dataset"] = _dataset_name(config.data.dataset)
    (folder / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _model_card(learner, peft_config, base, head, config=config, role=role, metrics=metrics, note=note).save(
        folder / "README.md"
    )
    return folder


def _point_at_base(path: Path, base_id: str) -> None:
    """Rewrite PEFT's ``adapter_config.json`` at ``path`` so its ``base_model_name_or_path`` is ``base_id``."""
    adapter_config = json.loads(path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_id
    path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _base_record(name: str, base_id: str, local: str) -> dict[str, object]:
    """The adapter's base model as ``nebula.json`` records it: id, name and, for a builtin, its local build."""
    base: dict[str, object] = {"id": base_id, "name": name}
    if name in BUILTIN_MODELS:
        manifest = Path(local) / MANIFEST
        base.update(builtin=name, local_folder=local)
        if manifest.is_file():
            digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
            base.update(manifest_sha256=digest, hub_revision=digest[:40])
    return base


def _dataset_name(dataset: str) -> str:
    """A builtin dataset's name; a user file's name only (its local path stays on the machine)."""
    return dataset if "/" not in dataset and "\\" not in dataset else Path(dataset).name


def _model_card(learner, peft_config, base: dict, head: dict, *, config, role, metrics, note):
    from huggingface_hub import ModelCard, ModelCardData

    base_id = base["id"]
    data = ModelCardData(
        base_model=base_id if "builtin" in base or not Path(base_id).expanduser().exists() else None,
        library_name="peft",
        pipeline_tag="text-classification",
        tags=["lora", "text-classification", "federated-learning", "knowledge-distillation", "nebula"],
    )
    rows = _card_rows(peft_config, base_id, head, config)
    lines = [
        f"# {_TITLES.get(role, role.capitalize())}: LoRA adapter of {base_id}",
        "",
        "Trained with Nebula, federated knowledge distillation.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
    ]
    if "builtin" in base:
        lines += [
            f"The base weights are Nebula's local build of `{base_id}` (builtin `{base['builtin']}`; "
            f"`{ADAPTER_META}` records its manifest sha256). `nebula setup` puts that build in the Hugging Face "
            f"cache under this id.",
            "",
        ]
        if base["builtin"] in BUILD_NOTES:
            lines += [BUILD_NOTES[base["builtin"]], ""]
    if role in _PROVENANCE:
        lines += ["## Data", "", _PROVENANCE[role], ""]
        if role == "client" and config is not None and config.federation.client_init == "global-student":
            lines[-1:-1] = [
                "",
                "Each round it started from the global student the server sent down, when both run the same base.",
            ]
    if note:
        lines += [note, ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
    lines += [
        "## Load",
        "",
        "```python",
        "import json",
        "from peft import AutoPeftModelForSequenceClassification",
        "",
        f'head = json.load(open("{ADAPTER_META}"))["head"]  # num_labels, id2label, label2id',
        'model = AutoPeftModelForSequenceClassification.from_pretrained(".", **head)',
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _card_rows(peft_config, base_id: str, head: dict, config: NebulaConfig | None) -> list[tuple[str, str]]:
    """The card's summary table: base model, task, adapter and, with a ``config``, dataset and federation."""
    names = list(head["id2label"].values())
    targets = sorted(peft_config.target_modules or [])
    rows = [
        ("base model", f"`{base_id}`"),
        (
            "task",
            f"text classification, {head['num_labels']} labels: "
            + ", ".join(f"{i} `{n}`" for i, n in enumerate(names)),
        ),
        ("adapter", f"LoRA r={peft_config.r}, alpha={peft_config.lora_alpha} on {', '.join(targets)}; trained head"),
    ]
    if config is not None:
        fed, data_cfg = config.federation, config.data
        rows.append(("dataset", f"`{_dataset_name(data_cfg.dataset)}`"))
        rows.append(
            ("federation", f"{data_cfg.num_clients} clients, {fed.rounds} rounds, aggregation `{fed.aggregation}`")
        )
    return rows


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
