"""One weights layer: read any weights file a user has, load it into a model, and say exactly what was loaded.

Every loader of the project goes through this module: ``regla eval``, ``regla export``, ``regla bench``,
``regla train --initial-checkpoint`` and ``--resume``, and ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` (our models' ``pretrained_filter_fn`` is :func:`filter_fn`).

Files read (:func:`read_weights`):

* ``.safetensors`` (with the metadata :func:`save_weights` writes: model, classes, input size, normalisation);
* ``torch.save`` pickles (``.pth``/``.pt``/``.bin``/``.pth.tar``), read with ``weights_only=True`` (never executing
  pickled code), either a plain state dict or a container: ``model``, ``state_dict``, ``model_ema``,
  ``state_dict_ema`` (timm, DeiT, ConvNeXt, our ``regla train`` checkpoints), with ``module.`` (DDP) and
  ``_orig_mod.`` (``torch.compile``) prefixes removed (timm's ``clean_state_dict``);
* TorchScript archives (the RepNeXt release's ``*_fused.pt``): their state dict, through ``torch.jit.load``.

**The EMA rule** (one rule, timm's ``load_state_dict(use_ema=True)``): when a file holds both the raw and the EMA
weights, the EMA weights are used, unless the caller asks for the raw ones (``prefer_ema=False``, ``--no-ema``).
``regla train`` selects its best epoch by the EMA's top-1 when it keeps an EMA, so this is also the rule that
reproduces its reported accuracy.

Training-time or fused form: :func:`load_into` loads a state dict into the model as built, or, if it fits only the
re-parameterised (fused) form, into ``timm.utils.reparameterize_model(model)``. Its :class:`LoadReport` lists the
tensors loaded, missing, unused and of another shape.
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsageError
from .preflight import require_model

__all__ = [
    "CheckpointError",
    "LoadReport",
    "TRAIN_FORMAT",
    "Weights",
    "WeightsInfo",
    "compare_keys",
    "create_fused_model",
    "create_model_from_weights",
    "filter_fn",
    "fuse",
    "infer_num_classes",
    "info_from_train_checkpoint",
    "is_torchscript",
    "load_into",
    "load_weights",
    "read_train_checkpoint",
    "read_weights",
    "save_weights",
    "unwrap_state_dict",
]

#: Format tag of the full-state checkpoints ``regla train`` writes (``last.pth`` / ``best.pth``).
TRAIN_FORMAT = "regla-train-v1"
#: Metadata format tag of the ``.safetensors`` files :func:`save_weights` writes.
WEIGHTS_FORMAT = "regla-weights-v1"
#: Containers, in the order of the EMA rule (EMA first) then the raw weights.
EMA_KEYS = ("state_dict_ema", "model_ema")
RAW_KEYS = ("state_dict", "model", "module", "net", "params")
_MAX_LISTED = 8


class CheckpointError(UsageError):
    """A weights file that cannot be read or does not fit; the message names the file, what was found and expected."""


# ---------------------------------------------------------------------------------------------------------------
# What a file holds
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class WeightsInfo:
    """What a weights file says about the model it belongs to (``None``: the file does not say)."""

    model: str | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    input_size: tuple[int, int, int] | None = None  # (C, H, W), as timm's pretrained_cfg
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    distillation: bool | None = None
    fused: bool | None = None

    def to_metadata(self) -> dict[str, str]:
        """The info as safetensors metadata (string to string; JSON values)."""
        meta = {"format": WEIGHTS_FORMAT}
        meta.update({k: json.dumps(v) for k, v in asdict(self).items() if v is not None})
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str] | None) -> WeightsInfo:
        """Read :meth:`to_metadata`'s output back (other metadata is ignored)."""
        if not meta or meta.get("format") != WEIGHTS_FORMAT:
            return cls()
        values = {}
        for name in cls.__dataclass_fields__:
            if name in meta:
                try:
                    values[name] = json.loads(meta[name])
                except json.JSONDecodeError:
                    continue
        for name in ("input_size", "mean", "std"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def pretrained_cfg_overlay(self) -> dict[str, Any]:
        """The fields a timm ``pretrained_cfg`` has (data config for evaluation), for those the file knows."""
        keys = ("num_classes", "input_size", "mean", "std", "interpolation", "crop_pct")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class Weights:
    """A state dict read from ``path``, where in the file it came from, and what the file says about it."""

    state: dict[str, torch.Tensor]
    path: Path
    container: str = ""  # "" (a plain state dict), "model", "model_ema", "state_dict", "state_dict_ema", ...
    info: WeightsInfo = field(default_factory=WeightsInfo)

    @property
    def ema(self) -> bool:
        """Whether these are EMA weights."""
        return self.container in EMA_KEYS

    def describe(self) -> str:
        where = f"'{self.container}' of " if self.container else ""
        return f"{where}{self.path}"


@dataclass
class LoadReport:
    """Which tensors of a state dict were loaded into a model, which the model missed, which were left unused."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unused: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    fused: bool = False  # loaded into the re-parameterised form

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unused or self.mismatched)

    def problems(self) -> str:
        """The missing, unused and reshaped keys, at most a few of each."""
        parts = []
        for title, items in (("missing in the file", self.missing), ("unused (not in the model)", self.unused)):
            if items:
                shown = ", ".join(items[:_MAX_LISTED]) + (" ..." if len(items) > _MAX_LISTED else "")
                parts.append(f"{len(items)} {title}: {shown}")
        if self.mismatched:
            shown = ", ".join(f"{k} (file {tuple(a)} vs model {tuple(b)})" for k, a, b in
                              self.mismatched[:_MAX_LISTED])
            parts.append(f"{len(self.mismatched)} of another shape: {shown}")
        return "; ".join(parts)

    def summary(self) -> str:
        """One line: how many tensors were loaded from where, and what did not fit."""
        form = " into the fused model" if self.fused else ""
        text = f"loaded {len(self.loaded)} tensors from {self.source}{form}"
        return text + (f"; {self.problems()}" if not self.ok else "; nothing missing or unused")


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def is_torchscript(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (``torch.jit.save``/``trace`` output: a zip with ``code/`` or
    ``constants.pkl``), false for anything else, a ``torch.save``'d state dict that also ends in ``.pt`` included."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, allowing the ``argparse.Namespace`` many training scripts store."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_file(path: Path) -> tuple[Any, dict[str, str] | None]:
    """The raw object in ``path`` and, for safetensors, its metadata."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    if is_torchscript(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), None
    return _torch_load(path), None


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"weights file {path} not found")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a weights file (.safetensors, .pth, .pt, .bin) "
                              "- for a run folder, name its best.safetensors or last.pth")
    return path


def read_raw(path: str | os.PathLike) -> tuple[Any, dict[str, str] | None]:
    """Open ``path`` (safetensors, torch pickle read with ``weights_only=True``, or TorchScript) without unwrapping.

    Raises :class:`CheckpointError` naming the file when it is missing, a folder, or not a weights file.
    """
    path = _check_path(path)
    expected = "expected .safetensors, or a torch.save'd state dict or checkpoint (.pth/.pt/.bin)"
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix != ".safetensors" and not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointError(f"cannot read checkpoint {path}: not a weights file (it starts with {head!r}); "
                              f"{expected}")
    try:
        return _read_file(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is one "not a weights file" error
        first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or truncated?): {first[:160]}; "
                              f"{expected}") from e


def unwrap_state_dict(obj: Any, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a checkpoint container, by the EMA rule; returns it and the container key used.

    ``obj`` is a plain state dict or a mapping holding one under ``state_dict_ema``/``model_ema`` (used first when
    ``prefer_ema``), ``state_dict``, ``model``, ``module``, ``net`` or ``params``. Prefixes ``module.`` and
    ``_orig_mod.`` are removed (timm's ``clean_state_dict``).
    """
    from timm.models import clean_state_dict

    container = ""
    for _ in range(3):  # containers nest at most a couple of levels deep in practice
        if not isinstance(obj, Mapping) or _tensor_share(obj) >= 0.5:
            break
        keys = (EMA_KEYS if prefer_ema else ()) + RAW_KEYS
        key = next((k for k in keys if isinstance(obj.get(k), Mapping) and obj[k]), None)
        if key is None:
            break
        obj, container = obj[key], key
    if not isinstance(obj, Mapping):
        return {}, container
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return clean_state_dict(state), container


def _tensor_share(obj: Mapping) -> float:
    return sum(isinstance(v, torch.Tensor) for v in obj.values()) / max(len(obj), 1)


def info_from_train_checkpoint(obj: Mapping[str, Any]) -> WeightsInfo:
    """What a ``regla train`` checkpoint records about its model and data (also the metadata of the
    ``.safetensors`` written beside it)."""
    saved, arch = obj.get("cfg") or {}, obj.get("arch") or {}
    class_map = obj.get("class_map")
    names = [n for n, _ in sorted(class_map.items(), key=lambda kv: kv[1])] if class_map else None
    size = saved.get("img_size")
    return WeightsInfo(
        model=arch.get("model"), num_classes=arch.get("num_classes"), class_names=names,
        input_size=(int(arch.get("in_chans", 3)), int(size), int(size)) if size else None,
        mean=tuple(saved["mean"]) if saved.get("mean") else None, std=tuple(saved["std"]) if saved.get("std") else None,
        interpolation=saved.get("interpolation"), crop_pct=saved.get("crop_pct"),
        distillation=arch.get("distillation"), fused=False)


def read_weights(path: str | os.PathLike, prefer_ema: bool = True) -> Weights:
    """Read the weights in any file a user has (see the module docstring), by the EMA rule."""
    raw, meta = read_raw(path)
    path = Path(path).expanduser()
    state, container = unwrap_state_dict(raw, prefer_ema)
    if not state:
        found = f"a mapping with keys {sorted(map(str, raw))[:_MAX_LISTED]}" if isinstance(raw, Mapping) \
            else f"a {type(raw).__name__}"
        raise CheckpointError(f"{path} holds no tensors: found {found}; expected a state dict or a checkpoint "
                              f"with one under {', '.join(EMA_KEYS + RAW_KEYS)}")
    if isinstance(raw, Mapping) and raw.get("format") == TRAIN_FORMAT:
        info = info_from_train_checkpoint(raw)
    else:
        info = WeightsInfo.from_metadata(meta)
    return Weights(state=state, path=path, container=container, info=info)


def read_train_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a full-state ``regla train`` checkpoint (``last.pth``), the only file a resume accepts."""
    path = _check_path(path)
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path} holds weights only; resuming needs a full checkpoint (last.pth)")
    raw, _ = read_raw(path)
    if not isinstance(raw, dict) or raw.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a `regla train` checkpoint (no '{TRAIN_FORMAT}' format tag); "
                              "to start from its weights use --set initial_checkpoint=PATH")
    return raw


# ---------------------------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------------------------


def compare_keys(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> LoadReport:
    """How ``state`` fits ``model.state_dict()``: loadable, missing, unused and reshaped keys."""
    own = model.state_dict()
    report = LoadReport(source=source,
                        missing=sorted(k for k in own if k not in state),
                        unused=sorted(k for k in state if k not in own))
    for k in sorted(own):
        if k in state:
            if tuple(state[k].shape) == tuple(own[k].shape):
                report.loaded.append(k)
            else:
                report.mismatched.append((k, tuple(state[k].shape), tuple(own[k].shape)))
    return report


def _fused_copy(model: nn.Module) -> nn.Module:
    from timm.utils import reparameterize_model

    return reparameterize_model(model)


def load_into(model: nn.Module, weights: Weights | Mapping[str, torch.Tensor], strict: bool = True,
              allow_fused: bool = True, source: str | None = None) -> tuple[nn.Module, LoadReport]:
    """Load ``weights`` into ``model`` (training-time form) or, if they fit only that, its fused form.

    Returns the model that holds the weights (``model`` itself, or its re-parameterised copy) and the report.
    ``strict=True``: every tensor must fit, else :class:`CheckpointError` names what differs. ``strict=False``
    (initialising a backbone from a classifier): the tensors that fit are loaded; the report lists the rest.
    """
    state = weights.state if isinstance(weights, Weights) else dict(weights)
    source = source or (weights.describe() if isinstance(weights, Weights) else "state dict")
    report = compare_keys(model, state, source)
    if report.missing and allow_fused:  # only a fused file leaves the model's tensors missing (its BN, branches)
        fused = _fused_copy(model)
        fused_report = compare_keys(fused, state, source)
        if fused_report.ok or (not strict and len(fused_report.loaded) > len(report.loaded)):
            model, report = fused, fused_report
            report.fused = True
    if strict and not report.ok:
        form = " (nor its fused form)" if allow_fused else ""
        raise CheckpointError(f"{source} does not fit {type(model).__name__}{form}: {report.problems()}")
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=strict)
    return model, report


def infer_num_classes(state: Mapping[str, torch.Tensor], classifier: str | tuple[str, ...] | None) -> int | None:
    """The number of classes of the classifier named by a timm ``pretrained_cfg`` entry ``classifier``, from its
    weights.

    Looks for the 2-D weight of that module, or of a module under it (a fused or nested head); ``None`` if absent.
    """
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for name in names:
        prefixes = [name]
        while "." in prefixes[-1]:
            prefixes.append(prefixes[-1].rsplit(".", 1)[0])  # a fused head collapses to its parent module
        for prefix in prefixes:
            for key in (f"{prefix}.weight", f"{prefix}.linear.weight", f"{prefix}.head.weight"):
                if key in state and state[key].ndim == 2:
                    return int(state[key].shape[0])
    return None


def _has_distillation_head(state: Mapping[str, torch.Tensor]) -> bool:
    return any("head_dist" in k for k in state)


def create_model_from_weights(path: str | os.PathLike, model_name: str | None = None,
                              num_classes: int | None = None, *, prefer_ema: bool = True, fuse: bool = False,
                              **kwargs: Any) -> tuple[nn.Module, Weights, LoadReport]:
    """Create the timm model a weights file belongs to and load it strictly (training-time or fused form).

    The model name, class count and distillation head come from the file where it records them (``regla train``
    checkpoints and the ``.safetensors`` we write), else from the arguments, else (classes) from the classifier's
    weight shape. A name or class count that contradicts the file is an error naming both. With ``fuse=True``
    the result is re-parameterised for inference. The model is in eval mode.
    """
    import timm

    weights = read_weights(path, prefer_ema=prefer_ema)
    info = weights.info
    name = _resolve(model_name, info.model, "model", weights.path)
    if name is None:
        raise CheckpointError(f"{weights.path} does not record its model: give the model name (e.g. --model regla_m)")
    require_model(name)
    cfg = timm.models.get_pretrained_cfg(name)
    from_state = infer_num_classes(weights.state, cfg.classifier if cfg is not None else None)
    classes = _resolve(num_classes, info.num_classes, "num_classes", weights.path)
    if classes is None:
        classes = from_state
    if classes is not None and from_state is not None and classes != from_state:
        raise CheckpointError(f"{weights.path} has a {from_state}-class classifier; {classes} classes were asked for")
    if classes is not None:
        kwargs.setdefault("num_classes", classes)
    if info.distillation or (info.distillation is None and _has_distillation_head(weights.state)):
        kwargs.setdefault("distillation", True)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    model, report = load_into(model, weights)
    if fuse and not report.fused:
        model = _fused_copy(model)
    return model.eval(), weights, report


def fuse(model: nn.Module) -> nn.Module:
    """Fuse every training-time branch for inference (``timm.utils.reparameterize_model``) and set eval mode."""
    from timm.utils import reparameterize_model

    return reparameterize_model(model.eval(), inplace=True).eval()


def create_fused_model(name: str | None, checkpoint: str | os.PathLike | None = None,
                       num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Create timm model ``name`` (after ``import regla``), load ``checkpoint`` if given, fuse it, eval mode.

    With a checkpoint, the model name and class count may come from the file's metadata (``name=None``); they are
    checked against the file where it records them. Training-time and fused weights are both accepted.
    """
    import timm

    if checkpoint is None:
        if name is None:
            raise CheckpointError("give a model name or a weights file that records one")
        require_model(name)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return fuse(timm.create_model(name, pretrained=False, **kwargs))
    model, _, _ = create_model_from_weights(checkpoint, name, num_classes, fuse=True, **kwargs)
    return model  # fused, in eval mode


def _resolve(given: Any, recorded: Any, what: str, path: Path) -> Any:
    """The given value, checked against the file's record (either may be ``None``)."""
    if given is not None and recorded is not None and given != recorded:
        raise CheckpointError(f"{path} was saved with {what}={recorded!r}, but {what}={given!r} was given")
    return given if given is not None else recorded


def filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn`` of our models: unwrap by the EMA rule; a fused file fuses ``model`` in place.

    timm has already picked a container by the same rule when it read a file; this also handles what it does not
    (nested containers, ``_orig_mod.``), and re-parameterises ``model`` in place when the weights fit only its
    fused form, so ``timm.create_model(..., pretrained_cfg_overlay=dict(file=fused_weights))`` works.
    """
    state, _ = unwrap_state_dict(state_dict)
    own = compare_keys(model, state)
    if own.ok or not own.missing:  # nothing of the model is missing: not a fused file (timm adapts the classifier)
        return state
    fused_model = _fused_copy(model)
    fused = compare_keys(fused_model, state)
    if fused.ok and hasattr(model, "fuse"):
        model.fuse()
    elif set(fused_model.state_dict()) == set(model.state_dict()) and len(own.unused) > len(own.missing):
        raise CheckpointError("training-form weights cannot be loaded into an already fused model: load them into "
                              "the training-time model first, then fuse")
    return state


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def load_weights(model: nn.Module, weights: str | os.PathLike | Mapping[str, torch.Tensor], prefer_ema: bool = True,
                 *, source: str | os.PathLike | None = None) -> nn.Module:
    """Load a weights file, or a state dict read from the file ``source``, into ``model`` as built (training-time
    form), strictly; returns ``model``. A state dict that does not fit says it may be of another architecture (the
    run harness's resume and ``regla train --initial-checkpoint`` load one)."""
    if not isinstance(weights, Mapping):
        model, _ = load_into(model, read_weights(weights, prefer_ema), allow_fused=False)
        return model
    try:
        model, _ = load_into(model, weights, allow_fused=False, source=str(source or "state dict"))
    except CheckpointError as e:
        raise CheckpointError(f"{e} - a checkpoint from another architecture?") from None
    return model


def safetensors_bytes(state: Mapping[str, torch.Tensor], info: WeightsInfo | None = None) -> bytes:
    """A state dict (contiguous CPU copies, no shared storage) and its info as safetensors bytes."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    return save(tensors, metadata=(info or WeightsInfo()).to_metadata())


def save_weights(path: str | os.PathLike, state: Mapping[str, torch.Tensor], info: WeightsInfo | None = None) -> Path:
    """Write ``state`` as ``.safetensors`` with ``info`` as metadata, atomically."""
    from .outputs import atomic_write_bytes

    return atomic_write_bytes(path, safetensors_bytes(state, info))
