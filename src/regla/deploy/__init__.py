"""Deployment: export fused models to ONNX, TorchScript and Core ML, checked against PyTorch.

>>> from regla.deploy import export_model
>>> export_model("regla_m", "onnx", "regla_m.onnx")            # doctest: +SKIP
"""

from ..checkpoints import CheckpointError, create_fused_model, fuse, read_weights
from .export import (
    FORMATS,
    ExportError,
    ExportResult,
    export_coreml,
    export_model,
    export_onnx,
    export_torchscript,
    ort_session,
    verify_onnx,
)

__all__ = [
    "FORMATS",
    "CheckpointError",
    "ExportError",
    "ExportResult",
    "create_fused_model",
    "export_coreml",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "fuse",
    "ort_session",
    "read_weights",
    "verify_onnx",
]
