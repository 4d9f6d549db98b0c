"""The package is verified before onnxruntime reads it: altered, missing or unparseable files fail loudly."""

import json
import shutil

import pytest

from nebula.client.runtime.errors import ExportError
from nebula.client.runtime.package import (
    MANIFEST_FILE,
    MODEL_FILE,
    check_output_folder,
    load_package,
    read_manifest,
    sha256_file,
)
from nebula.deploy.export.export import ExportConfig, export_adapter


@pytest.fixture
def package_copy(pruned_package, tmp_path):
    folder = tmp_path / "package"
    shutil.copytree(pruned_package, folder)
    return folder


def test_manifest_records_what_the_device_needs(pruned_package, adapter_dir):
    manifest = read_manifest(pruned_package)
    assert manifest.labels == ("neg", "neu", "pos") and manifest.max_length == 64 and manifest.target == "fp32"
    assert manifest.model_sha256 == sha256_file(pruned_package / MODEL_FILE)
    assert manifest.vocab_map_sha256 == sha256_file(pruned_package / "vocab_map.npy")
    assert manifest.source_adapter == str(adapter_dir.resolve())
    assert manifest.base_model == "sentence-transformers/paraphrase-MiniLM-L3-v2"  # portable: the Hub id it stands for
    assert manifest.created.endswith("+00:00")


def test_flipped_bytes_in_the_model_fail_before_onnxruntime_reads_it(package_copy):
    model = package_copy / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8])
    model.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=rf"{model}: sha256 mismatch"):
        load_package(package_copy)


def test_altered_vocabulary_map_is_caught(package_copy):
    (package_copy / "vocab_map.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ExportError, match=r"vocab_map\.npy: sha256 mismatch"):
        load_package(package_copy)


def test_missing_manifest(package_copy):
    (package_copy / MANIFEST_FILE).unlink()
    with pytest.raises(ExportError, match=rf"{package_copy / MANIFEST_FILE}: missing"):
        load_package(package_copy)


def test_manifest_without_a_field_names_the_field(package_copy):
    data = json.loads((package_copy / MANIFEST_FILE).read_text())
    del data["model_sha256"]
    (package_copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ExportError, match="missing field 'model_sha256'"):
        load_package(package_copy)


def test_a_file_onnxruntime_cannot_parse_is_an_export_error(package_copy):
    """Hash matching (the manifest was rewritten too) but not an ONNX model."""
    model = package_copy / MODEL_FILE
    model.write_bytes(b"this is not a protobuf")
    data = json.loads((package_copy / MANIFEST_FILE).read_text())
    data["model_sha256"] = sha256_file(model)
    (package_copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ExportError, match=rf"{model}: onnxruntime cannot load the model"):
        load_package(package_copy)


def test_output_folder_that_is_not_a_package_is_refused_before_any_work(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not an export package"):
        export_adapter(ExportConfig(adapter_dir="/does/not/matter", out=str(tmp_path)))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert check_output_folder(tmp_path / "new") == tmp_path / "new"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("target", "int4", "export.target must be one of"),
        ("max_length", 0, "export.max_length must be > 0"),
        ("adapter_dir", "", "export.adapter_dir is required"),
    ],
)
def test_export_config_names_the_bad_field(field, value, message):
    config = ExportConfig(adapter_dir="a", out="b")
    setattr(config, field, value)
    with pytest.raises(ExportError, match=message):
        config.validate()


def test_static_int8_needs_a_dataset():
    with pytest.raises(ExportError, match="export.dataset is required for target static-int8"):
        ExportConfig(adapter_dir="a", out="b", target="static-int8").validate()
