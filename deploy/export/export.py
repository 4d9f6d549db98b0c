"""``nebula export``: adapter folder -> export package, in one call.

merge (merge.py) -> optional vocabulary pruning (vocab.py) -> fp32 ONNX and the target's
conversion (onnx_export.py) -> package folder with manifest (package.py).
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
        return self


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
    from nebula.common.data import DatasetError, load_dataset, split_dataset

    try:
        dataset = load_dataset(config.dataset)
        _, public, _ = split_dataset(
            len(dataset), test=config.test_size, public=config.calibration_size, seed=config.seed
        )
    except DatasetError as err:
        raise ExportError(str(err)) from None
    return [dataset.texts[i] for i in public]


def export_adapter(config: ExportConfig) -> Manifest:
    """Export ``config.adapter_dir`` into ``config.out``; returns the written manifest.

    Raises
    ------
    ExportError
        Bad configuration, an output folder that is not an export package, an adapter that cannot
        be loaded, label names that do not fit the head, or a target unavailable here. Nothing is
        written before the model has been exported and converted.
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
        return write_package(
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


def _dataset_label_names(dataset: str | None) -> list[str] | None:
    """The label names of ``dataset`` (None without one), a dataset that does not load raising ExportError."""
    from nebula.common.data import DatasetError, load_dataset

    if not dataset:
        return None
    try:
        return load_dataset(dataset).label_names
    except DatasetError as err:
        raise ExportError(str(err)) from None


def _prune_vocab(model, tokenizer, config: ExportConfig) -> np.ndarray:
    """Prune ``model``'s vocabulary to the tokens of ``config.prune_vocab_from``; the old-to-new id map."""
    from nebula.deploy.export.vocab import corpus_kept_ids, prune_model_vocab

    if tokenizer.unk_token_id is None:
        raise ExportError(f"{config.adapter_dir}: the tokenizer has no unknown token; its vocabulary cannot be pruned")
    kept = corpus_kept_ids(tokenizer, read_corpus(config.prune_vocab_from), max_length=config.max_length)
    id_map = prune_model_vocab(model, kept, unk_id=tokenizer.unk_token_id)
    log.info("vocabulary pruned to %d of %d tokens", len(kept), len(id_map))
    return id_map
