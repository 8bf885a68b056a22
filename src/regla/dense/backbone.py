"""Any timm ``features_only`` backbone (ReGLA, RepNeXt, iFormer, RepViT, most timm CNNs) under a torchvision
``FeaturePyramidNetwork``, initialised from a classification checkpoint through :mod:`regla.checkpoints`.

``features_only`` models rename flattened stages (``stages.0.x`` -> ``stages_0.x``, or nest the model under
``model.``); :func:`init_from_classifier` maps a classifier's keys onto the feature model's by those rules and
reports, through :func:`regla.checkpoints.load_into`, which tensors were loaded and which were left unused (the
classifier head).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..checkpoints import CheckpointError, LoadReport, load_into, read_weights
from ..config import Recipe
from ..errors import UsageError

_logger = logging.getLogger("regla.dense")

#: The strides Mask R-CNN's anchors (32..512 px on P2..P6) and Semantic FPN's 1/4-scale head assume.
EXPECTED_REDUCTIONS = (4, 8, 16, 32)


def _features(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, features_only=True, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError, NotImplementedError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UsageError(f"backbone {name!r} has no features_only support in timm ({first}); expected a model "
                         "that returns multi-scale feature maps (ReGLA, RepNeXt, iFormer, RepViT ...)") from None


def create_features(name: str, drop_path: float = 0.0, model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``timm.create_model(name, features_only=True)`` returning the levels at strides 4, 8, 16, 32 (ResNet's
    stride-2 stem output left out); a UsageError for a model that cannot give them."""
    from ..preflight import require_model

    require_model(name, "backbone")
    kwargs = dict(model_kwargs or {})
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    body = _features(name, kwargs)
    reductions = tuple(body.feature_info.reduction())
    if reductions == EXPECTED_REDUCTIONS:
        return body
    if not set(EXPECTED_REDUCTIONS) <= set(reductions):
        raise UsageError(f"backbone {name!r} gives feature maps at strides {list(reductions)}; the FPN needs four "
                         f"at strides {list(EXPECTED_REDUCTIONS)} (a hierarchical backbone)")
    indices = tuple(max(i for i, r in enumerate(reductions) if r == want) for want in EXPECTED_REDUCTIONS)
    return _features(name, {**kwargs, "out_indices": indices})


def norm_stats(cfg: Recipe) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The recipe's mean/std, else those of the backbone's timm pretrained config (ImageNet's by default)."""
    import timm

    pcfg = timm.models.get_pretrained_cfg(cfg.task.backbone)
    mean = cfg.task.mean or getattr(pcfg, "mean", None) or (0.485, 0.456, 0.406)
    std = cfg.task.std or getattr(pcfg, "std", None) or (0.229, 0.224, 0.225)
    return tuple(mean), tuple(std)


def _flat(key: str) -> str:
    return key.replace(".", "_")


def init_from_classifier(body: nn.Module, path: str | Path, prefer_ema: bool = True) -> LoadReport:
    """Load a classification checkpoint (any file :func:`read_weights` reads) into a ``features_only`` model.

    Keys are matched after timm's flattening of sequential stages; the report lists what was loaded, missing and
    unused (the classifier). A file of another architecture (tensors of other shapes, or nothing loaded) is a
    :class:`CheckpointError` naming the file.
    """
    weights = read_weights(path, prefer_ema=prefer_ema)
    own = {_flat(k.removeprefix("model.")): k for k in body.state_dict()}  # FeatureGetterNet nests as .model
    own.update({_flat(k): k for k in body.state_dict()})
    state = {own.get(_flat(k), k): v for k, v in weights.state.items()}
    _, report = load_into(body, state, strict=False, allow_fused=False, source=weights.describe())
    if report.mismatched or not report.loaded:
        raise CheckpointError(f"{weights.describe()} does not fit backbone {type(body).__name__}: "
                              f"{report.problems() or 'no tensor name matches'}; is it a checkpoint of this model?")
    return report


class BackboneFPN(nn.Module):
    """A ``features_only`` body and a torchvision FPN: returns ``OrderedDict`` ``'0'..'3'`` (+ ``'pool'`` with
    ``LastLevelMaxPool``), the input torchvision's detectors take; ``out_channels`` as they expect.

    ``freeze_bn``: the body's BatchNorm layers stay in eval mode in :meth:`train` (their statistics are frozen,
    their affine parameters still train), mmdet's ``norm_eval=True``.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_pool: bool = True,
                 freeze_bn: bool = True) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels()), out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool else None)
        self.out_channels = out_channels
        self.freeze_bn = freeze_bn

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))

    def train(self, mode: bool = True) -> BackboneFPN:
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_bn_stats(self.body)
        return self


def freeze_bn_stats(module: nn.Module) -> None:
    """Every BatchNorm under ``module`` in eval mode (running statistics used, not updated)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def build_body(cfg: Recipe, log: bool = True) -> tuple[nn.Module, LoadReport | None]:
    """The backbone of a dense recipe (``backbone``, ``backbone_kwargs``, ``drop_path``, ``pretrained``)."""
    body = create_features(cfg.task.backbone, drop_path=cfg.task.drop_path,
                           model_kwargs=cfg.task.backbone_kwargs)
    report = None
    if cfg.task.pretrained:
        report = init_from_classifier(body, cfg.task.pretrained)
        if log:
            _logger.info("backbone %s: %s", cfg.task.backbone, report.summary())
    return body, report
