"""The export package: one folder a device needs, and nothing else.

Layout::

    model.onnx        the graph (input_ids, attention_mask) -> logits, in the target's precision
    tokenizer.json    the fast tokenizer (read by the ``tokenizers`` library on the device)
    vocab_map.npy     optional: old -> new token id table of a pruned vocabulary (int64, (V,))
    manifest.json     labels, max_length, target, base model, sha256 of every file above, ...

:func:`load_package` hashes each file and compares it with the manifest *before* onnxruntime
parses anything, so a truncated download or an altered model fails loudly, naming the file,
instead of predicting garbage. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nebula.client.runtime.errors import ExportError

FORMAT = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_MAP_FILE = "vocab_map.npy"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds; :meth:`from_dict` checks every field and names a bad one."""

    labels: tuple[str, ...]
    max_length: int
    target: str
    base_model: str
    pad_token_id: int  # in the tokenizer's (full) vocabulary; the runtime maps it like any token
    unk_token_id: int | None  # in the full vocabulary: pruned tokens become this one
    model_sha256: str
    tokenizer_sha256: str
    vocab_map_sha256: str | None  # None: the vocabulary is not pruned
    kept_vocab_size: int | None
    source_adapter: str
    created: str  # ISO 8601, UTC
    opset: int
    inputs: tuple[str, ...] = INPUT_NAMES
    output: str = OUTPUT_NAME
    format: int = FORMAT

    def to_dict(self) -> dict:
        return {**asdict(self), "labels": list(self.labels), "inputs": list(self.inputs)}

    @classmethod
    def from_dict(cls, data: object, *, where: str) -> Manifest:
        if not isinstance(data, dict):
            raise ExportError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ExportError(f"{where}: format {data.get('format')!r} is not the supported {FORMAT}; re-export")
        expected = {
            "labels": list,
            "max_length": int,
            "target": str,
            "base_model": str,
            "pad_token_id": int,
            "unk_token_id": (int, type(None)),
            "model_sha256": str,
            "tokenizer_sha256": str,
            "vocab_map_sha256": (str, type(None)),
            "kept_vocab_size": (int, type(None)),
            "source_adapter": str,
            "created": str,
            "opset": int,
            "inputs": list,
            "output": str,
            "format": int,
        }
        for f in fields(cls):
            if f.name not in data:
                raise ExportError(f"{where}: missing field {f.name!r}")
            if not isinstance(data[f.name], expected[f.name]) or isinstance(data[f.name], bool):
                raise ExportError(f"{where}: field {f.name!r} has the wrong type ({type(data[f.name]).__name__})")
        if not data["labels"] or not all(isinstance(x, str) for x in data["labels"]):
            raise ExportError(f"{where}: field 'labels' must be a non-empty list of strings")
        if data["max_length"] <= 0:
            raise ExportError(f"{where}: field 'max_length' must be > 0, got {data['max_length']}")
        known = {f.name for f in fields(cls)}
        return cls(
            **{k: v for k, v in data.items() if k in known}
            | {"labels": tuple(data["labels"]), "inputs": tuple(data["inputs"])}
        )


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest is 3.11+: a device runs Python 3.10 (JetPack 6)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # datetime.UTC is 3.11+


def pad_batch(rows: Sequence[Sequence[int]], *, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id rows to the longest: ``(input_ids, attention_mask)``, both int64 (B, L)."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


# --- writing ----------------------------------------------------------------------------------


def check_output_folder(folder: str | Path) -> Path:
    """``folder`` may be written: absent, empty, or an earlier export package (it is replaced).

    Called before any work, so a wrong ``--out`` changes nothing on disk.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MANIFEST_FILE).is_file())):
        raise ExportError(f"{folder}: exists and is not an export package; choose another --out or empty it")
    return folder


def write_package(
    folder: str | Path,
    *,
    model_file: str | Path,
    tokenizer,
    id_map: np.ndarray | None,
    labels: Sequence[str],
    max_length: int,
    target: str,
    base_model: str,
    source_adapter: str | Path,
    opset: int,
) -> Manifest:
    """Assemble the package in a temporary folder beside ``folder``, then move it into place.

    ``tokenizer`` is a ``transformers`` fast tokenizer (duck-typed: ``save_pretrained`` must write
    ``tokenizer.json``). ``model_file`` is moved, not copied. A crash leaves ``folder`` as it was.
    """
    folder = check_output_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        shutil.move(str(model_file), tmp / MODEL_FILE)
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / TOKENIZER_FILE).is_file():
            raise ExportError(f"{source_adapter}: the tokenizer has no {TOKENIZER_FILE} (a fast tokenizer is needed)")
        if id_map is not None:
            np.save(tmp / VOCAB_MAP_FILE, np.asarray(id_map, dtype=np.int64), allow_pickle=False)
        manifest = Manifest(
            labels=tuple(labels),
            max_length=max_length,
            target=target,
            base_model=base_model,
            pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
            unk_token_id=None if tokenizer.unk_token_id is None else int(tokenizer.unk_token_id),
            model_sha256=sha256_file(tmp / MODEL_FILE),
            tokenizer_sha256=sha256_file(tmp / TOKENIZER_FILE),
            vocab_map_sha256=sha256_file(tmp / VOCAB_MAP_FILE) if id_map is not None else None,
            kept_vocab_size=int(id_map.max()) + 1 if id_map is not None else None,
            source_adapter=str(Path(source_adapter).resolve()),
            created=now_utc(),
            opset=opset,
        )
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        old = folder.parent / f".{folder.name}.tmp-old"
        if folder.exists():  # a directory rename cannot replace a non-empty directory
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# --- loading ----------------------------------------------------------------------------------


@dataclass
class Package:
    """A verified export package, its onnxruntime session and its vocabulary map."""

    folder: Path
    manifest: Manifest
    session: object  # onnxruntime.InferenceSession
    id_map: np.ndarray | None  # (V,) int64, or None when the vocabulary is not pruned

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / TOKENIZER_FILE


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    if not Path(folder).is_dir():
        raise ExportError(f"{folder}: export folder not found")
    if not path.is_file():
        raise ExportError(f"{path}: missing; {folder} is not an export package (run `nebula export`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: unreadable manifest ({err})") from None
    return Manifest.from_dict(data, where=str(path))


def verify_file(path: Path, expected: str) -> None:
    """Raise :class:`ExportError` naming ``path`` unless its sha256 is ``expected``."""
    if not path.is_file():
        raise ExportError(f"{path}: missing from the export package")
    actual = sha256_file(path)
    if actual != expected:
        raise ExportError(
            f"{path}: sha256 mismatch: the file has {actual}, the manifest says {expected}; "
            f"the package is corrupt or was altered, export it again"
        )


def load_package(folder: str | Path, *, intra_op_threads: int | None = None) -> Package:
    """Verify every file of an export package against its manifest, then open the model.

    Parameters
    ----------
    folder : str or Path
        An export folder written by ``nebula export``.
    intra_op_threads : int, optional
        onnxruntime threads per operator (None: onnxruntime's default, every core).

    Raises
    ------
    ExportError
        Missing or invalid manifest, a file whose sha256 differs from the manifest (checked
        before onnxruntime reads it), a vocabulary map of the wrong shape, or a model that
        onnxruntime cannot load or whose inputs are not the manifest's.
    """
    import onnxruntime as ort

    folder = Path(folder)
    manifest = read_manifest(folder)
    verify_file(folder / MODEL_FILE, manifest.model_sha256)
    verify_file(folder / TOKENIZER_FILE, manifest.tokenizer_sha256)
    id_map = None
    if manifest.vocab_map_sha256 is not None:
        path = folder / VOCAB_MAP_FILE
        verify_file(path, manifest.vocab_map_sha256)
        try:
            id_map = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ExportError(f"{path}: unreadable vocabulary map ({err})") from None
        if id_map.ndim != 1 or id_map.dtype != np.int64 or id_map.min() < 0:
            raise ExportError(
                f"{path}: expected a 1-D int64 table of non-negative ids, got {id_map.dtype} {id_map.shape}"
            )
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    try:
        session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"{folder / MODEL_FILE}: onnxruntime cannot load the model ({err})") from None
    names = tuple(i.name for i in session.get_inputs())
    if set(names) != set(manifest.inputs):
        raise ExportError(f"{folder / MODEL_FILE}: model inputs {names} differ from the manifest's {manifest.inputs}")
    return Package(folder, manifest, session, id_map)
