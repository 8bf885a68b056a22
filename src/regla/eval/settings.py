"""What an evaluation runs with: the transform settings and the class mapping, each from the best source.

Transform settings (input size, crop ratio and mode, interpolation, mean, std) come from, in order: the flags
given, what the weights file records (:class:`regla.checkpoints.WeightsInfo`: a ``regla train`` checkpoint's
recipe, or our ``.safetensors`` metadata), then the model's timm ``pretrained_cfg`` (timm's
``resolve_data_config``). Never from the training recipe's defaults alone: weights trained at 32 px are evaluated
at 32 px.

Class names: when the file records them, a folder's classes are mapped to the model's outputs by name, so a folder
holding a subset of the classes works and a class the model never saw is an error naming it. Without names, the
folder must hold exactly the model's classes, taken in timm's natural-sort order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regla.checkpoints import WeightsInfo
from regla.data.errors import DataError
from regla.data.folders import class_map_for

__all__ = ["DATA_KEYS", "class_names_of", "map_classes", "resolve_settings"]

#: The settings of an evaluation transform, as timm's ``resolve_data_config`` returns them.
DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_FLAG_KEYS = {"img_size": "input_size", "crop_pct": "crop_pct", "interpolation": "interpolation"}


def resolve_settings(flags: dict[str, Any], info: WeightsInfo,
                     model_cfg: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The evaluation transform's settings and where each came from (``"flag"``, ``"file"`` or ``"model"``).

    ``flags``: ``img_size``, ``crop_pct``, ``interpolation`` (``None``: not given). ``info``: what the weights file
    records. ``model_cfg``: the model's ``pretrained_cfg`` (timm's defaults where it says nothing).
    """
    from timm.data import resolve_data_config

    file_cfg = {k: v for k, v in info.pretrained_cfg_overlay().items() if k != "num_classes"}
    merged = {**(model_cfg or {}), **file_cfg}
    given = {k: v for k, v in flags.items() if v is not None}
    if "img_size" in given and merged.get("input_size"):
        given["in_chans"] = merged["input_size"][0]
    config = resolve_data_config(args=given, pretrained_cfg=merged or {"input_size": None})
    config = {k: config[k] for k in DATA_KEYS if k in config}
    from_flags = {_FLAG_KEYS[k] for k in given if k in _FLAG_KEYS}
    sources = {k: "flag" if k in from_flags else "file" if k in file_cfg else "model" for k in config}
    return config, sources


def class_names_of(info: WeightsInfo, model_cfg: dict[str, Any] | None, num_classes: int | None) -> list[str] | None:
    """The model's class names: recorded in the weights file, else in its ``pretrained_cfg`` (``label_names``)."""
    if info.class_names:
        return list(info.class_names)
    names = (model_cfg or {}).get("label_names")
    if names and (num_classes is None or len(names) == num_classes):
        return list(names)
    return None


def map_classes(folder: Path, folder_classes: list[str], names: list[str] | None,
                num_classes: int | None) -> dict[str, int]:
    """Folder class name -> the model's output index (see the module docstring); raises :class:`DataError`."""
    if names is not None:
        unknown = [c for c in folder_classes if c not in names]
        if unknown:
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise DataError(f"{folder}: class(es) the model was not trained on: {', '.join(unknown[:10])} "
                            f"(its {len(names)} classes: {shown})")
        index = {name: i for i, name in enumerate(names)}
        return {c: index[c] for c in folder_classes}
    if num_classes is not None and len(folder_classes) != num_classes:
        raise DataError(f"{folder} holds {len(folder_classes)} class folders but the model has {num_classes} "
                        "outputs, and the weights record no class names to match them by: evaluate on a folder "
                        "with all its classes, or use weights saved with their class names (regla train's)")
    return class_map_for(folder_classes)
