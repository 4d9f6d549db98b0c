"""``nebula export``: adapter folder -> export package, in one call.

merge (merge.py) -> optional structured pruning recovered by distillation (structured.py) -> optional
vocabulary pruning (vocab.py) -> fp32 ONNX and the target's conversion (onnx_export.py) -> package folder
with manifest (package.py), and the pruning record where the structure was pruned.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nebula.client.runtime.errors import ExportError
from nebula.client.runtime.package import Manifest, check_output_folder, write_package
from nebula.deploy.export.onnx_export import OPSET, TARGETS, calibration_batches, convert, export_fp32
from nebula.deploy.export.structured import write_record
from nebula.learning.prune_spec import SPEC_HELP, PruneSpec

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ExportConfig:
    """One export; :meth:`validate` names the field of a bad value."""

    adapter_dir: str = _opt("", "adapter folder written by save_adapter (e.g. <run>/models/global-student)")
    out: str = _opt("", "export folder to write (replaced if it holds an earlier export)")
    target: str = _opt("cpu-int8", f"deployment target: {', '.join(TARGETS)}")
    base: str | None = _opt(None, "base model override: builtin name or folder (default: the adapter's own)")
    max_length: int = _opt(64, "tokens per input, special tokens included (as in training)")
    prune_vocab_from: str | None = _opt(
        None,
        "keep only the tokens of this corpus: a dataset (tweets, bbc, .csv, .jsonl) or a .txt file, one text per line",
    )
    labels: tuple[str, ...] | None = _opt(None, "class names in label-id order (default: from --dataset)")
    dataset: str | None = _opt(None, "dataset the adapter was trained on: label names, static-int8 calibration")
    test_size: int = _opt(500, "global test examples, kept out of calibration (as data.test_size)")
    seed: int = _opt(0, "split seed (as data.seed)")
    calibration_size: int = _opt(128, "public texts that calibrate static-int8")
    prune: str = _opt("", SPEC_HELP)
    prune_recover_epochs: int = _opt(1, "epochs of distillation from the unpruned model after --prune (0: none)")
    prune_texts: int = _opt(
        512,
        "unlabelled texts --prune scores importance and recovers on: the first of --dataset's public pool, "
        "else of --prune-vocab-from's corpus",
    )
    prune_lr: float = _opt(1e-4, "AdamW learning rate of the recovery after --prune")

    def validate(self) -> ExportConfig:
        if not self.adapter_dir:
            raise ExportError("export.adapter_dir is required")
        if not self.out:
            raise ExportError("export.out is required")
        if self.target not in TARGETS:
            raise ExportError(f"export.target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        for name in ("max_length", "test_size", "calibration_size"):
            if getattr(self, name) <= 0:
                raise ExportError(f"export.{name} must be > 0, got {getattr(self, name)}")
        if TARGETS[self.target].needs_calibration and not self.dataset:
            raise ExportError(f"export.dataset is required for target {self.target} (its public texts calibrate)")
        if self.prune:
            self._validate_prune()
        return self

    def _validate_prune(self) -> None:
        try:
            PruneSpec.parse(self.prune)
        except ValueError as err:
            raise ExportError(f"export.prune: {err}") from None
        if not (self.dataset or self.prune_vocab_from):
            raise ExportError(
                "export.prune needs unlabelled texts to score importance and recover on: give export.dataset "
                "(--dataset, its public pool) or export.prune_vocab_from (--prune-vocab-from, a corpus)"
            )
        if self.prune_recover_epochs < 0:
            raise ExportError(f"export.prune_recover_epochs must be >= 0, got {self.prune_recover_epochs}")
        if self.prune_texts <= 0:
            raise ExportError(f"export.prune_texts must be > 0, got {self.prune_texts}")
        if not self.prune_lr > 0:
            raise ExportError(f"export.prune_lr must be > 0, got {self.prune_lr}")


def read_corpus(name_or_path: str) -> list[str]:
    """Texts of a dataset (:func:`nebula.common.data.load_dataset`) or of a ``.txt`` file (one per line)."""
    from nebula.common.data import DatasetError, load_dataset

    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".txt":
        try:
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise ExportError(f"{path}: cannot read the corpus ({err})") from None
    try:
        return load_dataset(name_or_path).texts
    except DatasetError as err:
        raise ExportError(str(err)) from None


def choose_labels(
    num_labels: int,
    *,
    given: Sequence[str] | None,
    dataset_names: Sequence[str] | None,
    model_names: Sequence[str] | None,
    where: str,
) -> tuple[str, ...]:
    """Class names: explicit ones, else the dataset's, else the model's, else ``LABEL_i``."""
    for source, names in (("--labels", given), ("--dataset", dataset_names)):
        if names is not None:
            if len(names) != num_labels:
                raise ExportError(
                    f"{where}: the head has {num_labels} classes but {source} gives {len(names)}: {list(names)}"
                )
            return tuple(names)
    return tuple(model_names) if model_names else tuple(f"LABEL_{i}" for i in range(num_labels))


def calibration_texts(config: ExportConfig) -> list[str]:
    """The first ``calibration_size`` texts of the public pool the federation's split rule gives."""
    return public_texts(config, config.calibration_size)


def public_texts(config: ExportConfig, size: int) -> list[str]:
    """The first ``size`` texts of ``config.dataset``'s public pool under the federation's split rule (test set
    first, so none of them is a test text)."""
    from nebula.common.data import DatasetError, load_dataset, split_dataset

    try:
        dataset = load_dataset(config.dataset)
        _, public, _ = split_dataset(len(dataset), test=config.test_size, public=size, seed=config.seed)
    except DatasetError as err:
        raise ExportError(str(err)) from None
    return [dataset.texts[i] for i in public]


def pruning_texts(config: ExportConfig) -> tuple[list[str], str]:
    """The unlabelled texts ``--prune`` runs on (at most ``prune_texts``) and where they come from: the public pool
    of ``config.dataset``, else the corpus ``config.prune_vocab_from``."""
    if config.dataset:
        return public_texts(config, config.prune_texts), f"the public pool of {config.dataset} (seed {config.seed})"
    texts = read_corpus(config.prune_vocab_from)[: config.prune_texts]
    if not texts:
        raise ExportError(f"{config.prune_vocab_from}: the corpus holds no text for --prune to run on")
    return texts, str(config.prune_vocab_from)


def export_adapter(config: ExportConfig) -> Manifest:
    """Export ``config.adapter_dir`` into ``config.out``; returns the written manifest.

    Raises
    ------
    ExportError
        Bad configuration, an output folder that is not an export package, an adapter that cannot
        be loaded, label names that do not fit the head, a ``prune`` spec the model does not fit (more
        layers than it has; not BERT-family), or a target unavailable here. Nothing is written before
        the model has been exported and converted.
    """
    from nebula.deploy.export.merge import load_adapter_model, read_adapter_config

    config.validate()
    check_output_folder(config.out)
    model, tokenizer, num_labels, model_names = load_adapter_model(config.adapter_dir, base=config.base)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(
            f"{config.adapter_dir}: the tokenizer is not a fast tokenizer; the device runtime needs tokenizer.json"
        )
    dataset_names = _dataset_label_names(config.dataset)
    labels = choose_labels(
        num_labels, given=config.labels, dataset_names=dataset_names, model_names=model_names, where=config.adapter_dir
    )
    pruning = _prune_structure(model, tokenizer, config) if config.prune else None
    id_map = _prune_vocab(model, tokenizer, config) if config.prune_vocab_from else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model_pad = int(id_map[pad_id]) if id_map is not None else pad_id
    calibration = None
    if TARGETS[config.target].needs_calibration:
        rows = tokenizer(calibration_texts(config), truncation=True, max_length=config.max_length)["input_ids"]
        calibration = calibration_batches(
            [id_map[r].tolist() if id_map is not None else r for r in rows], pad_id=model_pad
        )
    with tempfile.TemporaryDirectory(prefix="nebula-export-") as tmp:
        fp32 = export_fp32(model, Path(tmp) / "fp32.onnx", pad_id=model_pad)
        final = convert(fp32, Path(tmp) / "model.onnx", config.target, calibration=calibration)
        base = config.base or read_adapter_config(config.adapter_dir).get("base_model_name_or_path", "")
        manifest = write_package(
            config.out,
            model_file=final,
            tokenizer=tokenizer,
            id_map=id_map,
            labels=labels,
            max_length=config.max_length,
            target=config.target,
            base_model=str(base),
            source_adapter=config.adapter_dir,
            opset=OPSET,
        )
    if pruning is not None:
        write_record(config.out, pruning)  # after the package is in place: the manifest format is the runtime's
    return manifest


def _dataset_label_names(dataset: str | None) -> list[str] | None:
    """The label names of ``dataset`` (None without one), a dataset that does not load raising ExportError."""
    from nebula.common.data import DatasetError, load_dataset

    if not dataset:
        return None
    try:
        return load_dataset(dataset).label_names
    except DatasetError as err:
        raise ExportError(str(err)) from None


def _prune_structure(model, tokenizer, config: ExportConfig) -> dict:
    """Prune ``model``'s heads, FFN neurons and layers by ``config.prune`` and recover it (structured.py)."""
    from nebula.deploy.export.structured import describe, prune_merged

    texts, source = pruning_texts(config)
    record = prune_merged(
        model, tokenizer, texts, spec=config.prune, recover_epochs=config.prune_recover_epochs, lr=config.prune_lr,
        max_length=config.max_length, seed=config.seed, texts_from=source, where=config.adapter_dir,
    )  # fmt: skip
    log.info("%s", describe(record))
    return record


def _prune_vocab(model, tokenizer, config: ExportConfig) -> np.ndarray:
    """Prune ``model``'s vocabulary to the tokens of ``config.prune_vocab_from``; the old-to-new id map."""
    from nebula.deploy.export.vocab import corpus_kept_ids, prune_model_vocab

    if tokenizer.unk_token_id is None:
        raise ExportError(f"{config.adapter_dir}: the tokenizer has no unknown token; its vocabulary cannot be pruned")
    kept = corpus_kept_ids(tokenizer, read_corpus(config.prune_vocab_from), max_length=config.max_length)
    id_map = prune_model_vocab(model, kept, unk_id=tokenizer.unk_token_id)
    log.info("vocabulary pruned to %d of %d tokens", len(kept), len(id_map))
    return id_map
