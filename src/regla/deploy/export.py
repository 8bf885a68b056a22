"""Export fused models to ONNX (fp32 or int8), ExecuTorch (fp32 or int8), TorchScript and Core ML, each checked
against PyTorch.

ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) by default: with torch 2.15 it
keeps batch, height and width dynamic for every model we ship and takes about a second, while the dynamo exporter
takes 5-10x longer and, for some models (iFormer), specialises a reshape to the example input's spatial size.
``exporter="dynamo"`` is available; ``"auto"`` tries the legacy exporter and falls back to dynamo.

Every file is written through :mod:`regla.outputs`: into a temporary sibling, checked there, and renamed onto its
name only when complete and checked. A failed export leaves nothing at the requested name (a file that exported
but failed the check is kept as ``<name>.failed``), and a previous output of that name is left as it was.

int8 files and ExecuTorch programs are also compared with the fp32 PyTorch model on real images
(:mod:`regla.deploy.calib`: a folder, or the digits demo set): top-1 agreement and the cosine similarity of the
logits are returned and written to ``<file>.agreement.json`` beside the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ReglaError, RunFailure, UsageError
from ..outputs import atomic_output
from .files import EXPORT_WRITER, FORMAT_OF_SUFFIX, SAME_KIND, SUFFIX, is_agreement

FORMATS = ("onnx", "coreml", "torchscript", "executorch")
FIXED_SIZE = ("coreml", "executorch")  # formats whose input size is fixed at export: the size goes in the name
INT8_FORMATS = ("onnx", "executorch")
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"
DEFAULT_ATOL = 1e-4


class ExportError(RunFailure):
    """Export failed, or the exported model does not match PyTorch (exit code 1)."""


@dataclass
class ExportResult:
    """What :func:`export_model` produced."""

    path: Path
    format: str
    img_size: tuple[int, int]
    max_abs_diff: float | None = None  # worst |exported - PyTorch| over the checked inputs (None: not checked)
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    int8: bool = False
    agreement: dict | None = None  # on real images: top-1 agreement, logit cosine (see calib.agreement)
    agreement_path: Path | None = None
    layout: str | None = None  # TorchScript: the memory layout its weights were saved in (the faster one)


def to_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` or ``(224,)`` -> ``(224, 224)``; ``(256, 320)`` -> ``(256, 320)`` (height, width)."""
    sizes = [img_size] if isinstance(img_size, int) else list(img_size)
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or any(int(s) < 16 for s in sizes):
        raise UsageError(f"img_size must be one or two integers >= 16 (height, width), got {img_size!r}")
    return int(sizes[0]), int(sizes[1])


def check_shapes(img_size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Inputs the exported model is checked on: batch 1 at ``img_size`` and batch 2 at a larger non-square size.

    The second shape proves the batch and spatial axes really are dynamic (sizes stay multiples of 32).
    """
    h, w = img_size
    return [(1, 3, h, w), (2, 3, h + 32, w + 64)]


def is_mlpackage(path: Path) -> bool:
    """A Core ML package folder written earlier (replaceable by a new one): ``*.mlpackage`` with a manifest."""
    return path.suffix == ".mlpackage" and (path / "Manifest.json").is_file()


def _failed(what: str, e: Exception) -> ExportError:
    """An exporter's or converter's exception as a one-line :class:`ExportError` (the chain keeps the rest)."""
    lines = str(e).strip().splitlines()
    return ExportError(f"{what} failed: {type(e).__name__}: {lines[0] if lines else ''}")


def export_onnx(model: nn.Module, path: str | os.PathLike, img_size: int | Sequence[int] = 224, *,
                dynamic: bool = True, opset: int = 18, exporter: str = "legacy",
                check: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` (already fused, eval) as ONNX with dynamic batch/height/width; atomic.

    ``check(tmp_path)``, if given, runs on the complete temporary file before it is renamed onto ``path``.
    """
    if exporter not in ("legacy", "dynamo", "auto"):
        raise UsageError(f"exporter must be legacy, dynamo or auto, got {exporter!r}")
    x = torch.randn(1, 3, *to_hw(img_size))
    with atomic_output(path) as tmp:
        try:
            _export_onnx_with(exporter, model, x, tmp, dynamic, opset)
        except (OSError, ReglaError):
            raise
        except Exception as e:  # noqa: BLE001 - an exporter failure is a runtime failure naming the exporter
            raise _failed(f"ONNX export ({exporter} exporter)", e) from e
        _run_check(check, tmp, path)
    return Path(path)


def _export_onnx_with(exporter: str, model: nn.Module, x: torch.Tensor, tmp: Path, dynamic: bool, opset: int) -> None:
    if exporter in ("legacy", "auto"):
        try:
            _export_onnx_legacy(model, x, tmp, dynamic, opset)
            return
        except Exception:
            if exporter == "legacy":
                raise
    _export_onnx_dynamo(model, x, tmp, dynamic, opset)


def _run_check(check: Callable[[Path], None] | None, tmp: Path, path: str | os.PathLike) -> None:
    """Run ``check`` on the written temporary; if it fails, keep the file as ``<path>.failed`` for inspection."""
    if check is None:
        return
    try:
        check(tmp)
    except ExportError as e:
        failed = Path(path).with_name(Path(path).name + ".failed")
        if not _replaceable_side_file(failed, Path(path).suffix):
            raise ExportError(f"{e} (the exported file was not kept: {failed} exists and is not a failed export "
                              "of this format)") from e
        os.replace(tmp, failed)
        raise ExportError(f"{e} (exported file kept as {failed} for inspection)") from e


def _replaceable_side_file(path: Path, suffix: str) -> bool:
    """Nothing at ``path``, or an export of the format of ``suffix`` (checked by content): never a user's file."""
    if not (path.exists() or path.is_symlink()):
        return True
    fmt = FORMAT_OF_SUFFIX.get(suffix)
    return fmt is not None and SAME_KIND[fmt](path)


def _export_onnx_legacy(model: nn.Module, x: torch.Tensor, path: Path, dynamic: bool, opset: int) -> None:
    axes = {ONNX_INPUT: {0: "batch", 2: "height", 3: "width"}, ONNX_OUTPUT: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                          dynamic_axes=axes, opset_version=min(opset, 20), dynamo=False, do_constant_folding=True)


def _export_onnx_dynamo(model: nn.Module, x: torch.Tensor, path: Path, dynamic: bool, opset: int) -> None:
    dim = torch.export.Dim.DYNAMIC
    shapes = ({0: dim, 2: dim, 3: dim},) if dynamic else None  # positional: whatever forward() names its input
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                    dynamic_shapes=shapes, opset_version=max(opset, 18), dynamo=True, verbose=False)
        program.save(str(path), external_data=False)


def ort_session(path: str | os.PathLike, threads: int = 1, *, arena: bool = True, spin: bool = True):
    """An ONNX Runtime CPU session with a fixed intra-op thread count and full graph optimisation.

    ``spin=False`` stops its intra-op threads from spinning once a run ends, so that sessions timed in turn do
    not take the cores from the one being timed."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute element-wise difference (inf if shapes differ)."""
    return float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")


def _tolerance(ref: np.ndarray, atol: float) -> float:
    """``atol`` for outputs of order one; scaled by ``max|ref|`` when outputs are larger (fp32 relative error)."""
    return atol * max(1.0, float(np.max(np.abs(ref))))


def verify_against_torch(model: nn.Module, run_exported, shapes: Sequence[tuple[int, ...]], atol: float,
                         what: str, seed: int = 0) -> float:
    """Run ``model`` and ``run_exported(x: np.ndarray) -> np.ndarray`` on the same random inputs; raise if they differ.

    The check passes when ``max|exported - torch| <= atol * max(1, max|torch|)``: plain ``atol`` for logits of
    order one (every trained model), relative for randomly initialised models whose logits can reach 1e5.
    """
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.inference_mode():
            ref = model(x).float().numpy()
        try:
            out = np.asarray(run_exported(x.numpy()))
        except Exception as e:  # noqa: BLE001 - reported with the shape that failed
            raise ExportError(f"{what} failed to run on input {tuple(shape)}: {type(e).__name__}: {e}") from e
        diff = max_abs_diff(out, ref)
        if not diff <= _tolerance(ref, atol):
            raise ExportError(f"{what} does not match PyTorch on input {tuple(shape)}: max abs diff {diff:.3g} > "
                              f"{_tolerance(ref, atol):.3g} (atol {atol:g}, max |logit| {np.max(np.abs(ref)):.3g}, "
                              f"output shapes {out.shape} vs {ref.shape})")
        worst = max(worst, diff)
    return worst


def verify_onnx(model: nn.Module, path: str | os.PathLike, shapes: Sequence[tuple[int, ...]],
                atol: float = DEFAULT_ATOL, threads: int = 1) -> float:
    """Check the ONNX file against ``model`` with ONNX Runtime on each of ``shapes``; return the worst difference."""
    sess = ort_session(path, threads)
    return verify_against_torch(model, lambda x: sess.run(None, {ONNX_INPUT: x})[0], shapes, atol, "ONNX Runtime")


def export_torchscript(model: nn.Module, path: str | os.PathLike, img_size: int | Sequence[int] = 224, *,
                       check: Callable[[Path], None] | None = None) -> Path:
    """Trace ``model`` to TorchScript and save it atomically (``check(tmp_path)`` as in :func:`export_onnx`)."""
    try:
        traced = _trace(model, to_hw(img_size))
    except ReglaError:
        raise
    except Exception as e:  # noqa: BLE001 - a model that cannot be traced is a runtime failure
        raise _failed("TorchScript tracing", e) from e
    with atomic_output(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, str(tmp))
        _run_check(check, tmp, path)
    return Path(path)


def verify_torchscript(model: nn.Module, path: str | os.PathLike, shapes: Sequence[tuple[int, ...]],
                       atol: float = DEFAULT_ATOL) -> float:
    """Reload the saved TorchScript module and check it against ``model``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(x)).numpy()

    return verify_against_torch(model, run, shapes, atol, "TorchScript")


def _trace(model: nn.Module, hw: tuple[int, int]) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, torch.randn(1, 3, *hw), check_trace=False)


def export_coreml(model: nn.Module, path: str | os.PathLike, img_size: int | Sequence[int] = 224, *,
                  precision: str = "fp16", deployment_target: str = "iOS16") -> Path:
    """Convert ``model`` (traced TorchScript) to a Core ML ML Program ``.mlpackage`` with a fixed input size.

    ``precision="fp16"`` is Core ML's default for ML Programs and what runs on the Neural Engine; conversion runs
    on Linux, running the package needs macOS/iOS (see docs/deployment.md). The package folder is written next to
    ``path`` and renamed onto it when complete; it replaces only an earlier ``.mlpackage``.
    """
    if precision not in ("fp16", "fp32"):
        raise UsageError(f"precision must be fp16 or fp32, got {precision!r}")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise UsageError(f"a Core ML ML Program is saved as a .mlpackage folder, got {path}")
    ct = import_coremltools()
    hw = to_hw(img_size)
    try:
        mlmodel = ct.convert(
            _trace(model, hw),
            inputs=[ct.TensorType(name=ONNX_INPUT, shape=(1, 3, *hw))],
            outputs=[ct.TensorType(name=ONNX_OUTPUT)],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, deployment_target),
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        )
    except Exception as e:  # noqa: BLE001 - a conversion failure is a runtime failure naming the converter
        raise _failed("Core ML conversion", e) from e
    with atomic_output(path, directory=True, same_kind=is_mlpackage) as tmp:
        mlmodel.save(str(tmp))
    return path


def import_coremltools():
    """Import coremltools quietly (it logs about optional native libraries that only exist on macOS)."""
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import coremltools as ct
        except ImportError as e:
            raise ExportError("Core ML export needs coremltools: pip install 'regla[deploy]'") from e
    return ct


def default_output(name: str, fmt: str, img_size: tuple[int, int], int8: bool = False) -> Path:
    """``<name>[_int8].onnx`` / ``<name>_<H>x<W>[_int8].pte`` / ``<name>_<H>x<W>.mlpackage`` / ``<name>.pt``."""
    stem = name if fmt not in FIXED_SIZE else f"{name}_{img_size[0]}x{img_size[1]}"
    return Path(stem + ("_int8" if int8 else "") + SUFFIX[fmt])


def export_model(model: str | nn.Module, format: str = "onnx", output: str | os.PathLike | None = None, *,
                 checkpoint: str | os.PathLike | None = None, img_size: int | Sequence[int] = 224,
                 verify: bool = True, atol: float = DEFAULT_ATOL, opset: int = 18, exporter: str = "legacy",
                 coreml_precision: str = "fp16", threads: int = 1, num_classes: int | None = None,
                 int8: bool = False, calib: str | os.PathLike | None = None, calib_images: int = 32,
                 check_images: int = 360, min_agreement: float = 0.0, min_cosine: float = -1.0) -> ExportResult:
    """Export a model for deployment, fused first, and (by default) check the result against PyTorch.

    Args:
        model: a registered model name (``"regla_m"``, ``"repvit_m1_1"``, ...) or an ``nn.Module`` (fused here).
        format: ``"onnx"`` (dynamic batch/height/width), ``"torchscript"`` (traced), ``"coreml"`` (ML Program
            ``.mlpackage`` with a fixed input size) or ``"executorch"`` (XNNPACK ``.pte``, fixed input size).
        output: destination path; default ``<name><suffix>`` in the current folder; an existing folder receives
            the file under its default name (:func:`regla.outputs.resolve_output`).
        checkpoint: safetensors or ``.pth`` state dict to load (training-time or fused form); name only.
        img_size: example input size, ``224`` or ``(H, W)``; the fixed input size for Core ML and ExecuTorch.
        verify: run the exported model against PyTorch on the same random inputs (ONNX, TorchScript: batch 1 at
            ``img_size`` and batch 2 at a larger non-square size; ExecuTorch: batch 1 at ``img_size``) and raise
            :class:`ExportError` if the max abs difference exceeds ``atol`` (scaled by the logits' magnitude when
            that exceeds 1); int8 files and ExecuTorch programs are also compared on real images
            (``agreement``). The checks run on the temporary file: a file that fails them never takes the
            output's name (it is kept as ``.failed``).
        num_classes: classifier size for a model name (a weights file without metadata, e.g. 10 for a model of
            ``regla train --demo``); default: the model's own (1000).
        int8: ONNX and ExecuTorch: static int8 quantization calibrated on real images (:mod:`regla.deploy.quantize`).
        calib: a folder of images to calibrate and check on (default: the digits demo set, train split to calibrate
            and val split to check); ``calib_images`` calibrate, up to ``check_images`` others check.
        min_agreement, min_cosine: fail (exit 1) when the top-1 agreement or the mean logit cosine on the real
            images is below these (default: report only).
    """
    from ..checkpoints import create_fused_model, fuse
    from ..outputs import resolve_output

    if format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if int8 and format not in INT8_FORMATS:
        raise UsageError(f"int8 export is available for {' and '.join(INT8_FORMATS)}, not {format}")
    hw = to_hw(img_size)
    if calib is not None:
        from .calib import check_folder

        check_folder(calib)
    if isinstance(model, str):
        kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
        name, module = model, create_fused_model(model, checkpoint, **kwargs)
    else:
        if checkpoint is not None or num_classes is not None:
            raise UsageError("checkpoint= and num_classes= go with a model name; build the module yourself")
        name, module = type(model).__name__.lower(), fuse(model)
    default = default_output(name, format, hw, int8)
    path = resolve_output(output, default.name, directory=format == "coreml")
    result = ExportResult(path=path, format=format, img_size=hw, int8=int8)
    if format == "coreml":
        export_coreml(module, path, hw, precision=coreml_precision)
        return result
    if format == "executorch" or int8:
        real = RealImageCheck(module, hw, calib, calib_images, check_images, min_agreement, min_cosine)
        if format == "executorch":
            export_executorch(module, path, hw, int8=int8, calib=real.calibration if int8 else None,
                              check=lambda tmp: _check_executorch(module, tmp, hw, verify, atol, int8, real, result))
        else:
            export_onnx_int8(module, path, hw, real.calibration, opset=opset, exporter=exporter,
                             check=lambda tmp: _check_int8_onnx(tmp, verify, threads, real, result))
        return result
    shapes = check_shapes(hw)

    def check(tmp: Path) -> None:
        if verify:
            result.max_abs_diff = (verify_onnx(module, tmp, shapes, atol, threads) if format == "onnx"
                                   else verify_torchscript(module, tmp, shapes, atol))
            result.checked_shapes = [tuple(s) for s in shapes]

    if format == "onnx":
        export_onnx(module, path, hw, opset=opset, exporter=exporter, check=check)
    else:
        from .layout import apply_layout

        # weights saved in the layout that runs this model faster at this size (PyTorch keeps it on load)
        result.layout = "channels-last" if apply_layout(module, "auto", (1, 3, *hw)) else "contiguous"
        export_torchscript(module, path, hw, check=check)
    return result


class RealImageCheck:
    """Calibration and check images for one export, and the comparison of an exported runner with fp32 PyTorch."""

    def __init__(self, module: nn.Module, hw: tuple[int, int], folder: str | os.PathLike | None, calib_images: int,
                 check_images: int, min_agreement: float, min_cosine: float):
        from .calib import calibration_set, check_set, model_norm

        norm = model_norm(module)
        self.module, self.min_agreement, self.min_cosine = module, min_agreement, min_cosine
        self.calibration = calibration_set(folder, hw, norm, calib_images)
        self.images = check_set(folder, hw, norm, check_images, exclude=self.calibration.files)

    def reference(self) -> np.ndarray:
        """fp32 PyTorch logits of the check images."""
        with torch.inference_mode():
            return np.concatenate([self.module(torch.from_numpy(b)).float().numpy()
                                   for b in self.images.batches(16)])

    def compare(self, run_exported: Callable[[np.ndarray], np.ndarray], what: str) -> dict:
        """Top-1 agreement and logit cosine of ``run_exported`` against fp32 PyTorch; raise below the minimums."""
        from .calib import agreement

        ref = self.reference()
        out = np.concatenate([np.asarray(run_exported(b)) for b in self.images.batches(16)])
        stats = {**agreement(ref, out), "images_source": self.images.source,
                 "calibration_images": len(self.calibration), "calibration_source": self.calibration.source,
                 "skipped": len(self.calibration.skipped) + len(self.images.skipped),
                 "skipped_files": {"calibration": list(self.calibration.skipped),
                                   "check": list(self.images.skipped)}}
        if stats["top1_agreement"] < self.min_agreement or stats["cosine_mean"] < self.min_cosine:
            raise ExportError(f"{what} agrees with fp32 PyTorch on {stats['top1_agreement']:.1%} of "
                              f"{stats['images']} real images (cosine {stats['cosine_mean']:.4f}); required: "
                              f"{self.min_agreement:.1%}, cosine {self.min_cosine:g}")
        return stats


def _write_agreement(result: ExportResult, stats: dict) -> None:
    """Record ``stats`` in ``result`` and as ``<file>.agreement.json`` beside the output (atomically)."""
    import json

    from ..outputs import atomic_write_text

    result.agreement = stats
    side = result.path.with_name(result.path.name + ".agreement.json")
    if side.exists() and not is_agreement(side):
        raise ExportError(f"cannot write {side}: it exists and is not an agreement report of regla export")
    doc = {"written_by": EXPORT_WRITER, "file": result.path.name, "format": result.format, "int8": result.int8,
           "img_size": list(result.img_size), "reference": "fp32 PyTorch (fused model)", **stats}
    result.agreement_path = atomic_write_text(side, json.dumps(doc, indent=2) + "\n")


def export_onnx_int8(model: nn.Module, path: str | os.PathLike, img_size: int | Sequence[int], calib,
                     *, opset: int = 18, exporter: str = "legacy",
                     check: Callable[[Path], None] | None = None) -> Path:
    """fp32 ONNX export (dynamic axes) then ONNX Runtime static int8 QDQ quantization into ``path``; atomic."""
    import tempfile

    from .quantize import quantize_onnx

    with tempfile.TemporaryDirectory(prefix="regla-int8-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", img_size, opset=opset, exporter=exporter)
        with atomic_output(path) as out:
            try:
                quantize_onnx(fp32, out, calib, ONNX_INPUT)
            except (OSError, ReglaError):
                raise
            except Exception as e:  # noqa: BLE001
                raise _failed("ONNX Runtime int8 quantization", e) from e
            _run_check(check, out, path)
    return Path(path)


def _check_int8_onnx(tmp: Path, verify: bool, threads: int, real: RealImageCheck, result: ExportResult) -> None:
    if verify:
        sess = ort_session(tmp, threads)
        _write_agreement(result, real.compare(lambda x: sess.run(None, {ONNX_INPUT: x})[0], "the int8 ONNX model"))


def export_executorch(model: nn.Module, path: str | os.PathLike, img_size: int | Sequence[int] = 224, *,
                      int8: bool = False, calib=None, check: Callable[[Path], None] | None = None) -> Path:
    """Lower ``model`` to an XNNPACK ExecuTorch program at ``img_size`` (fixed) and write it atomically."""
    from .executorch import lower

    lowered = lower(model, torch.randn(1, 3, *to_hw(img_size)), int8=int8, calib=calib)
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(lowered.buffer)
        _run_check(check, tmp, path)
    return Path(path)


def _check_executorch(module: nn.Module, tmp: Path, hw: tuple[int, int], verify: bool, atol: float, int8: bool,
                      real: RealImageCheck, result: ExportResult) -> None:
    from .executorch import runner

    if not verify:
        return
    run = runner(tmp)
    if not int8:
        shapes = [(1, 3, *hw)]
        result.max_abs_diff = verify_against_torch(module, run, shapes, atol, "ExecuTorch")
        result.checked_shapes = shapes
    _write_agreement(result, real.compare(run, f"the {'int8 ' if int8 else ''}ExecuTorch program"))
