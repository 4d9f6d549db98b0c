"""Loading and merging adapters: the merge is exact, and bad folders fail with the folder named."""

import json
import shutil

import numpy as np
import pytest

from nebula.client.runtime.errors import ExportError
from nebula.deploy.export.merge import adapter_num_labels, load_adapter_model, read_adapter_config, resolve_base
from nebula.learning.training import encode, predict_logits


def test_merged_model_matches_the_unmerged_peft_model(adapter_and_peft_logits, merged_logits):
    _, peft_logits = adapter_and_peft_logits
    np.testing.assert_allclose(merged_logits, peft_logits, atol=1e-5)


def test_merged_model_is_a_plain_classifier(adapter_dir):
    model, tokenizer, num_labels, label_names = load_adapter_model(adapter_dir)
    assert num_labels == 3 and label_names is None  # Nebula's adapters carry no class names
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert not model.training and tokenizer.is_fast


def test_number_of_classes_comes_from_the_saved_head(adapter_dir):
    assert adapter_num_labels(adapter_dir) == 3


def test_folder_without_adapter_config_is_an_export_error(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ExportError, match=rf"{tmp_path}: no adapter_config\.json"):
        load_adapter_model(tmp_path)


def test_missing_folder_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="adapter folder not found"):
        read_adapter_config(tmp_path / "nope")


def test_corrupt_adapter_config_names_the_file(tmp_path, adapter_dir):
    broken = tmp_path / "broken"
    shutil.copytree(adapter_dir, broken)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"broken/adapter_config\.json: corrupt adapter config"):
        load_adapter_model(broken)


def _moved_copy(adapter_dir, moved, *, base: str):
    """A copy of the adapter folder whose config names ``base`` as its base model."""
    shutil.copytree(adapter_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (moved / "adapter_config.json").write_text(json.dumps(config))
    return moved


def test_unknown_base_model_names_the_adapter_and_the_base(tmp_path, adapter_dir):
    moved = _moved_copy(adapter_dir, tmp_path / "moved", base="/nowhere/some-model")
    with pytest.raises(ExportError, match=r"moved: base model '/nowhere/some-model' not found; pass --base"):
        load_adapter_model(moved)


def test_a_builtin_cache_path_from_another_machine_resolves_to_the_builtin(tmp_path, adapter_dir):
    moved = _moved_copy(adapter_dir, tmp_path / "moved", base="/home/someone-else/.cache/nebula/models/minilm-l3")
    assert resolve_base(moved) == resolve_base(adapter_dir)


def test_base_override_wins(adapter_dir, tweets, merged_logits):
    model, tokenizer, _, _ = load_adapter_model(adapter_dir, base="minilm-l3")
    logits = predict_logits(model, encode(tokenizer, tweets["test"][:4], max_length=64))
    np.testing.assert_allclose(logits, merged_logits[:4], atol=1e-5)
