"""Merged PyTorch classifier -> ONNX graph -> one file per deployment target.

The graph
---------
Inputs ``input_ids`` and ``attention_mask``, int64 (batch, sequence), both axes dynamic; output
``logits``, float32 (batch, C). Opset 17, TorchScript (legacy) exporter: the torch.export-based
exporter is the default since torch 2.9 but needs the model to be traceable by torch.export,
which the transformers masking code is not reliably; the legacy tracer exports BERT and MPNet
as is and is verified against PyTorch by the tests.

``token_type_ids`` is not an input. Nebula classifies single texts, for which every token type
is 0, and BERT's embeddings use a registered all-zero buffer when the argument is omitted
(MPNet has no token types at all). Leaving it out keeps one input contract for all encoders.

The targets
-----------
Each target turns the fp32 file into the file that ships (:data:`TARGETS`, a registry by name).
All quantisation is done by ``onnxruntime.quantization``:

- ``fp32``: the exported graph unchanged.
- ``cpu-int8``: ``quantize_dynamic``, int8 weights per output channel for MatMul and Gather
  (the embedding table), activations quantised at run time. ~4x smaller; for CPUs.
- ``fp16``: ``onnxruntime.transformers.float16`` (ships with onnxruntime), inputs and outputs kept
  in their original types. 2x smaller; faster only where the execution provider has fp16 kernels
  (GPUs, NPUs); on a CPU it is usually slower than fp32.
- ``static-int8``: ``quantize_static`` in QDQ format, MatMul and Gather only, activation ranges
  calibrated (min/max) on public texts. Quantising every op (LayerNorm, Softmax, GELU) destroys
  the model, so those stay float.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nebula.client.runtime.errors import ExportError
from nebula.client.runtime.package import INPUT_NAMES, OUTPUT_NAME, pad_batch

OPSET = 17

Batch = dict[str, np.ndarray]  # {"input_ids": (B, L) int64, "attention_mask": (B, L) int64}


def export_fp32(model, path: str | Path, *, pad_id: int, opset: int = OPSET) -> Path:
    """Trace ``model`` (a merged ``transformers`` classifier, eval mode) into an fp32 ONNX file.

    The example batch has a padded row, so the traced graph keeps the attention-mask path
    (an all-ones example could let the masking code skip the mask as a constant).
    """
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, C)

    path = Path(path)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, pad_id, pad_id, pad_id]], dtype=torch.long) % vocab  # (2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.long)  # (2, 6)
    axes = {"batch": 0, "sequence": 1}
    dynamic = {name: {i: a for a, i in axes.items()} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():
        # TracerWarnings on shape arithmetic the mask code does in Python (constant for a given
        # graph, checked by the tests on other batch and sequence sizes) and the exporter's own
        # deprecation notice: noise for the user of `nebula export`.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LogitsOnly(model).eval(),
            (ids, mask),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))
    return path


# --- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A deployment target: how the fp32 file becomes the shipped file."""

    name: str
    help: str
    convert: Callable[[Path, Path, Sequence[Batch] | None], None]  # (fp32 file, out file, calibration)
    needs_calibration: bool = False
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here, or None


def _copy(src: Path, dst: Path, _: Sequence[Batch] | None) -> None:
    shutil.copyfile(src, dst)


def _dynamic_int8(src: Path, dst: Path, _: Sequence[Batch] | None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel scales: on MiniLM they halve the worst logit error of per-tensor ones at the
    # same size. reduce_range stays off: it only helps CPUs without VNNI (int8 dot products).
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gather"])


def _fp16_unavailable() -> str | None:
    try:
        import onnxruntime.transformers.float16  # noqa: F401
    except ImportError as err:
        return f"onnxruntime.transformers.float16 cannot be imported ({err})"
    return None


def _fp16(src: Path, dst: Path, _: Sequence[Batch] | None) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)  # logits stay float32
    onnx.save(model, str(dst))


def _static_int8(src: Path, dst: Path, calibration: Sequence[Batch] | None) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ExportError("static-int8 needs calibration texts: pass --dataset (its public pool calibrates)")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> Batch | None:
            return next(self._batches, None)

    quantize_static(
        src,
        dst,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gather"],
    )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("cpu-int8", "dynamic int8 (onnxruntime quantize_dynamic), ~4x smaller, for CPUs", _dynamic_int8),
        Target("fp32", "the exported graph as is", _copy),
        Target(
            "fp16", "half precision, 2x smaller, for GPU/NPU execution providers", _fp16, unavailable=_fp16_unavailable
        ),
        Target(
            "static-int8",
            "static int8 (quantize_static, QDQ) calibrated on public texts",
            _static_int8,
            needs_calibration=True,
        ),
    )
}


def convert(
    fp32_path: str | Path, out_path: str | Path, target: str, *, calibration: Sequence[Batch] | None = None
) -> Path:
    """Write ``target``'s model file from the fp32 export.

    Raises
    ------
    ExportError
        Unknown target, a target that cannot run in this environment, or static-int8 without calibration.
    """
    spec = TARGETS.get(target)
    if spec is None:
        raise ExportError(f"unknown target {target!r}; available: {', '.join(TARGETS)}")
    reason = spec.unavailable()
    if reason:
        raise ExportError(f"target {target} is unavailable here: {reason}")
    out = Path(out_path)
    with _quiet_root_logger():
        spec.convert(Path(fp32_path), out, calibration)
    return out


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs on the root logger: one INFO line per tensor, and advice to run
    its shape-inference pre-processing (which fails on this graph). Errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def calibration_batches(id_lists: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 16) -> list[Batch]:
    """Padded numpy batches of already (re)mapped token ids, for :func:`convert`'s calibration."""
    batches = []
    for start in range(0, len(id_lists), batch_size):
        ids, mask = pad_batch(id_lists[start : start + batch_size], pad_id=pad_id)
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches
