"""Edge export: a trained LoRA adapter becomes a self-contained ONNX package for devices.

Pipeline (``nebula export``)::

    adapter folder --merge.py--> merged PyTorch model --structured.py (optional)--> fewer heads, neurons, layers
        --vocab.py (optional)--> smaller embedding table
        --onnx_export.py--> model.onnx (fp32, then quantised per target) --package.py--> export folder

On the device only :mod:`nebula.client.runtime.predictor` is needed (onnxruntime, tokenizers, numpy; never
torch or transformers). :mod:`nebula.deploy.export.report` measures size, accuracy, agreement and latency.

This file imports nothing heavy on purpose: importing ``nebula.client.runtime.predictor`` must not pull in torch.
"""

from nebula.client.runtime.errors import ExportError

__all__ = ["ExportError"]
