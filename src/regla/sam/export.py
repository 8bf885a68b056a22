"""SAM as two ONNX files: the image encoder (fused) and the prompt encoder + mask decoder (``SamOnnxModel``).

As SAM's ONNX example and RepViT-SAM's ``export_onnx_model.py`` split it: the encoder runs once per image on the
normalised, padded ``(1, 3, S, S)`` input (``image`` -> ``image_embeddings``, a fixed size); the decoder is
``segment_anything.utils.onnx.SamOnnxModel`` (inputs ``image_embeddings``, ``point_coords``, ``point_labels``,
``mask_input``, ``has_mask_input``, ``orig_im_size``; outputs ``masks``, ``iou_predictions``, ``low_res_masks``)
with a dynamic number of points. A box is two points labelled 2 and 3, as in SAM's ONNX notebook.

Each file is written atomically (:mod:`regla.outputs`) and checked in ONNX Runtime against PyTorch before it takes
its name: the encoder against the unfused PyTorch encoder (so fusion is checked too), the decoder against
``SamOnnxModel`` in PyTorch on prompts other than the export's example (another point count, no mask input, another
original size).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..deploy.export import ExportError, max_abs_diff, ort_session, verify_against_torch
from ..outputs import atomic_output

__all__ = ["DECODER_INPUTS", "DECODER_OUTPUTS", "SamExport", "decoder_example", "export_decoder_onnx",
           "export_encoder_coreml", "export_encoder_onnx", "export_sam_onnx", "sam_onnx_model"]

ENCODER_INPUT, ENCODER_OUTPUT = "image", "image_embeddings"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4


@dataclass
class SamExport:
    """The two files :func:`export_sam_onnx` wrote and their worst difference from PyTorch."""

    encoder: Path
    decoder: Path
    encoder_max_abs_diff: float
    decoder_max_abs_diff: float


def sam_onnx_model(sam: Any) -> nn.Module:
    """``SamOnnxModel(sam, return_single_mask=True)`` whose crop to the pre-padding size stays dynamic in ONNX.

    segment-anything 1.0 crops with ``int(prepadded_size[i])``, which the tracer records as a constant: the exported
    decoder then crops every image as it cropped the export example's (wrong masks for another aspect ratio). The
    crop below slices with the tensor itself, which exports as a dynamic ``Slice``; everything else is Meta's.
    """
    from segment_anything.utils.onnx import SamOnnxModel

    class _DynamicCropSamOnnxModel(SamOnnxModel):
        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            import torch.nn.functional as F

            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            prepadded = self.resize_longest_image_size(orig_im_size, self.img_size)
            masks = masks[..., : prepadded[0], : prepadded[1]]
            size = orig_im_size.to(torch.int64)
            return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    return _DynamicCropSamOnnxModel(sam, return_single_mask=True).eval()


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                 dynamic_axes: dict[str, dict[int, str]] | None, opset: int) -> None:
    """``torch.onnx.export`` (TorchScript-based exporter, as ``regla export``) with warnings silenced."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)


def export_encoder_onnx(encoder: nn.Module, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                        atol: float = DEFAULT_ATOL, threads: int = 1, verify: bool = True) -> float | None:
    """Fuse ``encoder`` (a copy; ``timm.utils.reparameterize_model``), export it at its ``img_size``, check it.

    Returns the worst |ONNX Runtime - PyTorch| (``None`` without ``verify``); raises :class:`ExportError` when it
    exceeds ``atol * max(1, max|embedding|)``, leaving nothing at ``path``.
    """
    from timm.utils import reparameterize_model

    encoder = encoder.eval()
    size = int(encoder.img_size)
    fused = reparameterize_model(encoder)
    example = torch.randn(1, 3, size, size)
    diff = None
    with atomic_output(path) as tmp:
        try:
            _onnx_export(fused, (example,), tmp, [ENCODER_INPUT], [ENCODER_OUTPUT], None, opset)
        except Exception as e:  # noqa: BLE001 - an exporter failure is a runtime failure
            raise ExportError(f"ONNX export of the image encoder failed: {type(e).__name__}: {e}") from e
        if verify:
            sess = ort_session(tmp, threads)
            diff = verify_against_torch(encoder, lambda x: sess.run(None, {ENCODER_INPUT: x})[0],
                                        [(1, 3, size, size)], atol, "ONNX Runtime (image encoder)", seed=1)
    return diff


def decoder_example(sam: Any, num_points: int = 5, has_mask: bool = True, orig_size: tuple[int, int] = (1500, 2250),
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of ``SamOnnxModel`` for ``sam`` (SAM's export script's example, seeded)."""
    gen = torch.Generator().manual_seed(seed)
    grid = tuple(sam.prompt_encoder.image_embedding_size)
    size = int(sam.image_encoder.img_size)
    return {
        "image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, *grid, generator=gen),
        "point_coords": torch.rand(1, num_points, 2, generator=gen) * size,
        "point_labels": torch.randint(0, 4, (1, num_points), generator=gen).float(),
        "mask_input": torch.randn(1, 1, 4 * grid[0], 4 * grid[1], generator=gen),
        "has_mask_input": torch.tensor([1.0 if has_mask else 0.0]),
        "orig_im_size": torch.tensor([float(orig_size[0]), float(orig_size[1])]),
    }


def export_decoder_onnx(sam: Any, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL,
                        threads: int = 1, verify: bool = True) -> float | None:
    """Export the prompt encoder and mask decoder through ``SamOnnxModel`` (single mask, :func:`sam_onnx_model`).

    The check runs Meta's ``SamOnnxModel`` in PyTorch and the file in ONNX Runtime on two prompts unlike the export
    example (3 points without a mask input at 480x640; 1 point with one at 700x500) and compares every output.
    """
    model = sam_onnx_model(sam)
    example = decoder_example(sam)
    axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    diff = None
    with atomic_output(path) as tmp:
        try:
            _onnx_export(model, tuple(example.values()), tmp, list(DECODER_INPUTS), list(DECODER_OUTPUTS), axes,
                         opset)
        except Exception as e:  # noqa: BLE001 - an exporter failure is a runtime failure
            raise ExportError(f"ONNX export of the mask decoder failed: {type(e).__name__}: {e}") from e
        if verify:
            diff = _verify_decoder(sam, ort_session(tmp, threads), atol)
    return diff


def _verify_decoder(sam: Any, sess: Any, atol: float) -> float:
    """Every output of the ONNX decoder against Meta's own ``SamOnnxModel`` in PyTorch, on two unseen prompts."""
    from segment_anything.utils.onnx import SamOnnxModel

    model = SamOnnxModel(sam, return_single_mask=True).eval()
    worst = 0.0
    for case in (dict(num_points=3, has_mask=False, orig_size=(480, 640), seed=1),
                 dict(num_points=1, has_mask=True, orig_size=(700, 500), seed=2)):
        inputs = decoder_example(sam, **case)
        with torch.inference_mode():
            refs = [t.float().numpy() for t in model(**inputs)]
        try:
            outs = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
        except Exception as e:  # noqa: BLE001 - reported with the case that failed
            raise ExportError(f"ONNX Runtime (mask decoder) failed on {case}: {type(e).__name__}: {e}") from e
        for name, out, ref in zip(DECODER_OUTPUTS, outs, refs, strict=True):
            diff = max_abs_diff(np.asarray(out), ref)
            tol = atol * max(1.0, float(np.max(np.abs(ref))))
            if not diff <= tol:
                raise ExportError(f"ONNX Runtime (mask decoder) output {name!r} does not match PyTorch on {case}: "
                                  f"max abs diff {diff:.3g} > {tol:.3g} (shapes {np.shape(out)} vs {ref.shape})")
            worst = max(worst, diff)
    return worst


def export_encoder_coreml(encoder: nn.Module, path: str | os.PathLike, *, precision: str = "fp16",
                          deployment_target: str = "iOS16") -> Path:
    """The fused encoder as a Core ML ML Program (``image`` -> ``image_embeddings``, fixed ``img_size``).

    RepViT-SAM's Core ML route (its ``export_coreml_encoder.py``): trace, convert with coremltools, fp16 by default
    (what the Neural Engine runs). Conversion works on Linux; running the package needs macOS/iOS, so it is not
    checked against PyTorch here. The ``.mlpackage`` folder is written next to ``path`` and renamed onto it.
    """
    from timm.utils import reparameterize_model

    from ..deploy.export import import_coremltools, is_mlpackage

    path = Path(path)
    if path.suffix != ".mlpackage":
        raise ExportError(f"a Core ML ML Program is saved as a .mlpackage folder, got {path}")
    ct = import_coremltools()
    size = int(encoder.img_size)
    fused = reparameterize_model(encoder.eval())
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(fused, torch.randn(1, 3, size, size), check_trace=False)
            mlmodel = ct.convert(traced, inputs=[ct.TensorType(name=ENCODER_INPUT, shape=(1, 3, size, size))],
                                 outputs=[ct.TensorType(name=ENCODER_OUTPUT)], convert_to="mlprogram",
                                 minimum_deployment_target=getattr(ct.target, deployment_target),
                                 compute_precision=ct.precision.FLOAT16 if precision == "fp16"
                                 else ct.precision.FLOAT32)
    except Exception as e:  # noqa: BLE001 - a conversion failure is a runtime failure naming the converter
        raise ExportError(f"Core ML conversion of the image encoder failed: {type(e).__name__}: {e}") from e
    with atomic_output(path, directory=True, same_kind=is_mlpackage) as tmp:
        mlmodel.save(str(tmp))
    return path


def export_sam_onnx(sam: Any, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, *,
                    opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL, threads: int = 1) -> SamExport:
    """Write and check both files (the decoder first: it is quick, and the encoder export needs ``sam`` unfused)."""
    decoder_diff = export_decoder_onnx(sam, decoder_path, opset=opset, atol=atol, threads=threads)
    encoder_diff = export_encoder_onnx(sam.image_encoder, encoder_path, opset=opset, atol=atol, threads=threads)
    return SamExport(Path(encoder_path), Path(decoder_path), float(encoder_diff), float(decoder_diff))
