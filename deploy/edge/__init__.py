"""Edge export: a trained LoRA adapter becomes a self-contained ONNX package for devices.

Pipeline (``nebula export``)::

    adapter folder --merge.py--> merged PyTorch model --vocab.py (optional)--> smaller embedding table
        --onnx_export.py--> model.onnx (fp32, then quantised per target) --package.py--> export folder

On the device only :mod:`deploy.edge.runtime` is needed (onnxruntime, tokenizers, numpy; never
torch or transformers). :mod:`deploy.edge.report` measures size, accuracy, agreement and latency.

This file imports nothing heavy on purpose: importing ``deploy.edge.runtime`` must not pull in torch.
"""

from deploy.edge.errors import ExportError

__all__ = ["ExportError"]
