"""Static int8 quantization with each runtime's own tools, calibrated on real images.

* ONNX Runtime: :func:`quantize_onnx` = ``onnxruntime.quantization.quant_pre_process`` (shape inference and graph
  optimisation, as ONNX Runtime recommends) then ``quantize_static`` in the QDQ format, int8 weights per output
  channel, uint8 activations (the U8S8 layout ONNX Runtime's x86 kernels are fastest with), MinMax calibration fed
  by a :class:`ImageReader` (an ``onnxruntime.quantization.CalibrationDataReader``). Weights use 7 bits
  (``reduce_range=True``): ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI (AVX2: the AMD EPYC host this was
  measured on; not re-measured on the VNNI Xeon of later runs) add pairs of u8*s8 products in 16 bits, which
  saturates with full-range weights. On the `regla train --demo` model
  (digits validation set, 32 px) full range gave 98.61 % top-1 agreement with fp32 and mean logit cosine 0.9932;
  7-bit weights 99.72 % and 0.9996.
* ExecuTorch / XNNPACK: :func:`quantize_pt2e` = ``torch.export`` then torchao's PT2E flow
  (``prepare_pt2e`` -> calibration forwards -> ``convert_pt2e``) with ExecuTorch's ``XNNPACKQuantizer``,
  symmetric int8, per-channel weights, as ExecuTorch's XNNPACK documentation describes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .calib import ImageSet


def _ort_reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class ImageReader(_ort_reader_base()):
    """``CalibrationDataReader`` over an :class:`ImageSet`: one batch-1 input dict per image, then ``None``."""

    def __init__(self, images: ImageSet, input_name: str = "input"):
        self.input_name = input_name
        self._batches = iter(list(images.batches(1)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch, np.float32)}


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike, images: ImageSet,
                  input_name: str = "input") -> Path:
    """Write the static int8 QDQ version of the ONNX model at ``fp32_path`` to ``out_path`` (not atomic: callers
    pass a temporary path from :func:`regla.outputs.atomic_output`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()  # the quantizer logs per-tensor notes (1-D weights per channel) on the root logger
    level = root.level
    with tempfile.TemporaryDirectory(prefix="regla-quant-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
            quantize_static(str(pre), str(out_path), ImageReader(images, input_name), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)  # keeps per-tensor min/max, not tensors
        finally:
            root.setLevel(level)
    return Path(out_path)


def quantize_pt2e(model: nn.Module, example: torch.Tensor, images: ImageSet, quantizer=None) -> nn.Module:
    """``model`` (fused, eval) as a PT2E int8 graph module for XNNPACK, calibrated on ``images`` at ``example``'s size.

    Calibration runs one image at a time at the example's shape (the exported program's shapes are static).
    ``quantizer`` replaces the default (ExecuTorch's ``XNNPACKQuantizer``, symmetric, per-channel weights), e.g. one
    that leaves some operators in fp32.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if quantizer is None:
        quantizer = XNNPACKQuantizer()
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.inference_mode(False), torch.no_grad():
        graph = torch.export.export(model, (example,), strict=False).module()
        prepared = prepare_pt2e(graph, quantizer)
        for batch in images.batches(1):
            prepared(torch.from_numpy(batch))
        return convert_pt2e(prepared)
