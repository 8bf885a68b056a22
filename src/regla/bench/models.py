"""The models ``regla bench`` compares, with the published ImageNet-1K Top-1 figures it plots.

Every Top-1 figure below is copied from a paper (no distillation, 300-500 epochs, as each table states) and carries
its citation; none was measured here. Where the ReGLA paper's Table 2 and a model's own paper disagree, the model's
own paper is used and the disagreement is noted in ``note``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import UnknownModelError
from ..errors import unknown_model_message as _unknown_model_message
from ..models.regla import PAPER_FIGURES as REGLA_FIGURES
from ..models.repnext import PAPER_FIGURES as REPNEXT_FIGURES

REGLA_T2 = "ReGLA, Table 2"
IFORMER_T3 = "iFormer, Table 3"
REPVIT_T2 = "RepViT, Table 2 (no distillation)"
REPNEXT_T3 = "RepNeXt, Table 3 (no distillation)"

#: Full titles of the papers the short citations above refer to.
PAPERS: dict[str, str] = {
    "ReGLA": "Li, Zhao et al., ReGLA: Efficient Receptive-Field Modeling with Gated Linear Attention Network",
    "iFormer": "iFormer: Integrating ConvNet and Transformer for Mobile Application (ICLR 2025)",
    "RepViT": "Wang et al., RepViT: Revisiting Mobile CNN From ViT Perspective (CVPR 2024)",
    "RepNeXt": "Zhao, Luo, Ouyang, RepNeXt: A Fast Multi-Scale CNN using Structural Reparameterization",
}


@dataclass(frozen=True)
class Published:
    """A Top-1 accuracy figure as published, with where it comes from."""

    top1: float
    source: str
    note: str = ""


@dataclass(frozen=True)
class BenchModel:
    """One model of the default comparison: its timm name, display label, family and published Top-1."""

    name: str
    label: str
    family: str
    published: Published | None = None


def _m(name: str, label: str, family: str, top1: float, source: str, note: str = "") -> BenchModel:
    return BenchModel(name, label, family, Published(top1, source, note))


DEFAULT_MODELS: tuple[BenchModel, ...] = (
    _m("regla_t", "ReGLA-T", "ReGLA", REGLA_FIGURES["regla_t"]["top1"], REGLA_T2),
    _m("regla_s", "ReGLA-S", "ReGLA", REGLA_FIGURES["regla_s"]["top1"], REGLA_T2),
    _m("regla_m", "ReGLA-M", "ReGLA", REGLA_FIGURES["regla_m"]["top1"], REGLA_T2),
    _m("regla_l", "ReGLA-L", "ReGLA", REGLA_FIGURES["regla_l"]["top1"], REGLA_T2),
    _m("regla_x", "ReGLA-X", "ReGLA", REGLA_FIGURES["regla_x"]["top1"], REGLA_T2),
    _m("iformer_t", "iFormer-T", "iFormer", 74.1, IFORMER_T3),
    _m("iformer_s", "iFormer-S", "iFormer", 78.8, IFORMER_T3),
    _m("iformer_m", "iFormer-M", "iFormer", 80.4, IFORMER_T3),
    _m("iformer_l", "iFormer-L", "iFormer", 81.9, IFORMER_T3),
    _m("repvit_m0_9", "RepViT-M0.9", "RepViT", 77.4, REPVIT_T2),
    _m("repvit_m1_0", "RepViT-M1.0", "RepViT", 78.6, REPVIT_T2, "ReGLA Table 2 lists 78.2"),
    _m("repvit_m1_1", "RepViT-M1.1", "RepViT", 79.4, REPVIT_T2),
    _m("repvit_m1_5", "RepViT-M1.5", "RepViT", 81.2, REPVIT_T2),
    _m("repvit_m2_3", "RepViT-M2.3", "RepViT", 82.5, REPVIT_T2),
    _m("repnext_m1", "RepNeXt-M1", "RepNeXt", REPNEXT_FIGURES["repnext_m1"]["top1"], REPNEXT_T3),
    _m("repnext_m2", "RepNeXt-M2", "RepNeXt", REPNEXT_FIGURES["repnext_m2"]["top1"], REPNEXT_T3),
    _m("repnext_m3", "RepNeXt-M3", "RepNeXt", REPNEXT_FIGURES["repnext_m3"]["top1"], REPNEXT_T3),
    _m("repnext_m4", "RepNeXt-M4", "RepNeXt", REPNEXT_FIGURES["repnext_m4"]["top1"], REPNEXT_T3),
    _m("repnext_m5", "RepNeXt-M5", "RepNeXt", REPNEXT_FIGURES["repnext_m5"]["top1"], REPNEXT_T3),
    _m("mobilenetv4_conv_small", "MNV4-Conv-S", "MobileNetV4", 73.8, REGLA_T2),
    _m("mobilenetv4_conv_medium", "MNV4-Conv-M", "MobileNetV4", 79.9, REGLA_T2, "trained and evaluated at 256 px"),
    _m("efficientvit_b1", "EfficientViT-B1", "EfficientViT", 79.4, REGLA_T2),
    _m("efficientvit_b2", "EfficientViT-B2", "EfficientViT", 82.1, REGLA_T2),
    _m("fastvit_t12", "FastViT-T12", "FastViT", 79.1, REPNEXT_T3, "evaluated at 256 px"),
    _m("fastvit_sa12", "FastViT-SA12", "FastViT", 80.6, REPNEXT_T3, "evaluated at 256 px"),
    _m("shvit_s1", "SHViT-S1", "SHViT", 72.8, REGLA_T2),
    _m("shvit_s4", "SHViT-S4", "SHViT", 79.4, REGLA_T2),
)

_BY_NAME = {m.name: m for m in DEFAULT_MODELS}


def bench_model(name: str) -> BenchModel:
    """The :class:`BenchModel` for ``name``: the default entry if there is one, else a bare entry (no figures)."""
    return _BY_NAME.get(name) or BenchModel(name, name, name.split("_")[0], None)


def split_specs(specs: Iterable[str]) -> list[str]:
    """Flatten ``["a,b", "c"]`` into ``["a", "b", "c"]``, dropping empty items."""
    return [s.strip() for spec in specs for s in spec.split(",") if s.strip()]


def resolve_models(specs: Sequence[str] | None, available: Iterable[str]) -> list[str]:
    """Turn ``--models`` specs (names, comma lists, shell globs) into registered model names, in order.

    ``available`` is the set of registered names (``timm.list_models()`` after ``import regla``). With no specs the
    default list is returned, restricted to what is registered. An unknown name raises :class:`UnknownModelError`
    naming the closest registered matches.
    """
    available = sorted(set(available))
    if not specs:
        return [m.name for m in DEFAULT_MODELS if m.name in set(available)]
    out: list[str] = []
    for spec in split_specs(specs):
        if any(c in spec for c in "*?["):
            hits = fnmatch.filter(available, spec)
            if not hits:
                raise UnknownModelError(f"pattern {spec!r} matches no registered model")
        elif spec in available:
            hits = [spec]
        else:
            raise UnknownModelError(unknown_model_message(spec, available))
        out.extend(h for h in hits if h not in out)
    return out


def unknown_model_message(name: str, available: Sequence[str]) -> str:
    """:func:`regla.errors.unknown_model_message`, with a hint when ``name`` is in the default list."""
    return _unknown_model_message(name, available, _BY_NAME)
