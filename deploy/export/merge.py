"""Load a saved adapter on its base model and fold the LoRA update into the base weights.

An adapter folder is what :func:`nebula.learning.models.save_adapter` writes: ``adapter_config.json``,
``adapter_model.safetensors`` (LoRA matrices and the classifier head, PEFT's ``modules_to_save``)
and the tokenizer. After :meth:`~peft.LoraModel.merge_and_unload` each adapted linear layer is a
plain ``nn.Linear`` with ``W + (alpha / r) * B @ A``, so the exported graph has no LoRA branch and
costs exactly what the base model costs.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from nebula.client.runtime.errors import ExportError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """The parsed ``adapter_config.json`` of ``adapter_dir``.

    Raises
    ------
    ExportError
        The folder does not exist, has no ``adapter_config.json``, or the file is not a JSON object.
    """
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise ExportError(f"{folder}: adapter folder not found")
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise ExportError(
            f"{folder}: no {ADAPTER_CONFIG}; expected a PEFT adapter folder "
            f"(e.g. <run>/models/global-student or <run>/clients/<id>/adapter)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: corrupt adapter config ({err})") from None
    if not isinstance(config, dict):
        raise ExportError(f"{path}: corrupt adapter config (a JSON {type(config).__name__}, not an object)")
    return config


def adapter_num_labels(adapter_dir: str | Path, config: dict | None = None) -> int:
    """Number of classes, read from the shape of the saved classifier head.

    The head is among PEFT's ``modules_to_save``; its last linear layer (``classifier`` for BERT,
    ``classifier.out_proj`` for MPNet, ``score`` for Llama) has weight shape (C, hidden).
    """
    folder = Path(adapter_dir)
    config = config if config is not None else read_adapter_config(folder)
    shapes = _weight_shapes(folder)
    heads = [m for m in config.get("modules_to_save") or [] if m]
    candidates = {
        name: shape
        for name, shape in shapes.items()
        if len(shape) == 2
        and "lora_" not in name
        and name.endswith(".weight")
        and any(f".{head}." in f".{name}" for head in heads)
    }
    final = {n: s for n, s in candidates.items() if "out_proj" in n} or candidates
    classes = {shape[0] for shape in final.values()}
    if len(classes) != 1:
        raise ExportError(
            f"{folder}: cannot tell the number of classes from the saved head "
            f"(modules_to_save={heads}, 2-D head weights {sorted(final)})"
        )
    return classes.pop()


def _weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    for name in ADAPTER_WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(path), framework="np") as handle:
                    return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
            import torch

            return {k: tuple(v.shape) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
        except Exception as err:
            raise ExportError(f"{path}: corrupt adapter weights ({err})") from None
    raise ExportError(f"{folder}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")


def resolve_base(adapter_dir: str | Path, base: str | None = None, config: dict | None = None) -> str:
    """The folder (or hub id) of the adapter's base model, ready for ``from_pretrained``.

    ``base`` (the ``--base`` option) wins over the recorded ``base_model_name_or_path``. A builtin's hub
    id (what :func:`~nebula.learning.models.save_adapter` records) is resolved as that builtin; a recorded
    path ``<cache>/models/<builtin>`` (older adapters) is resolved as that builtin through
    :func:`nebula.learning.assets.resolve_model`, so an adapter trained on another machine (another cache
    path) still finds its base, and the cached weights are verified against their manifest.
    """
    from nebula.common.packages import builtin_name
    from nebula.learning.assets import BUILTIN_MODELS, AssetError, resolve_model

    folder = Path(adapter_dir)
    config = config if config is not None else read_adapter_config(folder)
    name = base or config.get("base_model_name_or_path")
    if not name or not isinstance(name, str):
        raise ExportError(f"{folder / ADAPTER_CONFIG}: no base_model_name_or_path; pass the base model with --base")
    path = Path(name).expanduser()
    builtin = builtin_name(name)  # by name, by the hub id adapters record, or by an older adapter's cache folder
    try:
        if builtin is not None:
            cache = path.parent.parent if path.name == builtin and path.parent.name == "models" else None
            return resolve_model(builtin, cache_dir=cache if cache is not None and cache.is_dir() else None)
    except AssetError as err:
        raise ExportError(f"{folder}: base model {name!r} cannot be prepared: {err}") from err
    if path.is_dir():
        return str(path)
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ExportError(
            f"{folder}: base model {name!r} not found; pass --base with a builtin name "
            f"({', '.join(BUILTIN_MODELS)}) or a model folder"
        )
    return name  # a hub id: transformers looks in the local HF cache (no network here)


def load_adapter_model(adapter_dir: str | Path, *, base: str | None = None):
    """Base model + adapter, merged into one plain ``transformers`` classifier in eval mode.

    Parameters
    ----------
    adapter_dir : str or Path
        A folder written by :func:`nebula.learning.models.save_adapter`.
    base : str, optional
        Base model override (builtin name, folder or hub id); default: the one the adapter records.

    Returns
    -------
    tuple
        ``(model, tokenizer, num_labels, label_names)``: a ``PreTrainedModel`` whose forward takes
        ``input_ids`` and ``attention_mask`` and returns ``.logits`` (B, C); the adapter's tokenizer
        (the base's if the adapter has none); C; and the class names if the model config carries
        real ones, else None (Nebula's adapters carry none; the dataset knows them).

    Raises
    ------
    ExportError
        Missing or corrupt adapter files, a base model that cannot be found or loaded, or an
        adapter that does not fit the base (e.g. trained on another architecture).
    """
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from nebula.learning.models import quiet_peft

    folder = Path(adapter_dir)
    config = read_adapter_config(folder)
    num_labels = adapter_num_labels(folder, config)
    base_path = resolve_base(folder, base, config)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the fresh head is reported "missing": the adapter brings it
    try:
        try:
            base_model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=num_labels)
        except (OSError, ValueError) as err:
            raise ExportError(f"{folder}: base model {base_path!r} cannot be loaded ({err})") from None
        try:
            with quiet_peft():
                model = PeftModel.from_pretrained(base_model, str(folder)).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ExportError(f"{folder}: the adapter does not load on base {base_path!r} ({err})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    model.requires_grad_(False)
    tokenizer_dir = folder if (folder / "tokenizer_config.json").is_file() else Path(base_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as err:
        raise ExportError(f"{tokenizer_dir}: tokenizer cannot be loaded ({err})") from None
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label.get(i, "")) for i in range(num_labels)]
    label_names = None if any(not n or _GENERIC_LABEL.fullmatch(n) for n in names) else names
    log.info("merged %s on %s (%d classes)", folder, base_path, num_labels)
    return model, tokenizer, num_labels, label_names
