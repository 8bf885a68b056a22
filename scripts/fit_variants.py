"""Fit the free settings of each ReGLA variant to the paper's params (Table 1) and MACs at 224 px (Table 2).

Table 1 fixes blocks and channels; the paper leaves open how a stage splits into ELRF blocks and attention groups,
the ELRF expansion, the RGMA key/value widths and the classifier's hidden width. This script enumerates a grid of
those settings, counts params and MACs analytically (the same counts as ``regla.utils.count_params`` /
``count_macs``: ``torch.utils.flop_counter`` FLOPs / 2, batch 1, unfused eval model, element-wise ops not counted),
checks the formula against the real model on a few settings, and prints for each variant the Pareto front of
(|params error|, |MACs error|) and the setting that minimises the larger of the two.

Usage::

    PYTHONPATH=src .venv/bin/python scripts/fit_variants.py [--variants l x] [--verify 3] [--front 12]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

IMG = 224
NUM_CLASSES = 1000

# The grid. Ranges are those of the peers ReGLA builds on: expansions 2-6 (MobileNetV4's UIB uses 2-6, iFormer 3-4),
# query/key width C/8-C/2 (iFormer reduces by 2-4, Table 15 of its supplement), value width C/2-C, classifier
# widths 1024-2560 (MobileNetV4 1280, EfficientViT-B 1536-2560). Stages 1-2 hold ELRF blocks only (Fig. 2); stages
# 3-4 hold at least one attention group each (Fig. 2: "In Stage 3 and Stage 4, RGMA is employed").
MLP_RATIOS = (2.0, 3.0, 4.0, 6.0)
KEY_RATIOS = (0.125, 0.25, 0.5)
VALUE_RATIOS = (0.5, 1.0)
HEAD_SIZES = (1024, 1280, 1536, 2048, 2560)


@dataclass(frozen=True)
class Variant:
    """Table 1's blocks and channels and Table 1-2's published params (M) and MACs (G, "GFlops" column)."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    params_m: float
    gmacs: float


VARIANTS: dict[str, Variant] = {
    "t": Variant((2, 2, 16, 6), (32, 64, 128, 256), 3.8, 0.48),
    "s": Variant((2, 2, 19, 6), (32, 64, 160, 320), 6.4, 1.04),
    "m": Variant((2, 2, 22, 6), (48, 96, 192, 384), 9.6, 1.24),
    "l": Variant((3, 3, 31, 9), (64, 128, 256, 448), 19.9, 1.73),
    "x": Variant((4, 4, 43, 12), (64, 128, 336, 512), 39.8, 2.22),
}


@dataclass(frozen=True)
class StageChoice:
    """Settings of one stage: attention groups, ELRF expansion, key and value width (fractions of C_i)."""

    groups: int
    mlp_ratio: float
    key_ratio: float = 0.0
    value_ratio: float = 1.0


# --- analytic counts (mirror src/regla/models/regla.py) ----------------------------------------------------------


def conv_norm(cin: int, cout: int, k: int, pixels: int, groups: int = 1) -> tuple[int, int]:
    """Params and MACs of ``ConvNorm``: a bias-free conv plus BatchNorm (2 params per channel, 0 MACs)."""
    weights = cin // groups * cout * k * k
    return weights + 2 * cout, weights * pixels


def add(*counts: tuple[int, int]) -> tuple[int, int]:
    """Sum (params, MACs) pairs."""
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def elrf(dim: int, ratio: float, pixels: int) -> tuple[int, int]:
    """ELRF block: DW3x3, PW expand, DW5x5, PW project (``regla.ELRF``)."""
    hidden = int(dim * ratio)
    return add(conv_norm(dim, dim, 3, pixels, dim), conv_norm(dim, hidden, 1, pixels),
               conv_norm(hidden, hidden, 5, pixels, hidden), conv_norm(hidden, dim, 1, pixels))


def attention_group(dim: int, key_ratio: float, value_ratio: float, pixels: int) -> tuple[int, int]:
    """CPE + RGMA (``gating="gate"``) + Conv.3; the ReLU attention's two bmm's cost ``N (2 d_k d_v + d_k)``."""
    dk, dv = max(int(dim * key_ratio), 1), int(dim * value_ratio)
    dw = conv_norm(dim, dim, 3, pixels, dim)
    attn = (0, pixels * (2 * dk * dv + dk))
    return add(dw, conv_norm(dim, 2 * dk + 2 * dv, 1, pixels), attn, conv_norm(dv, dim, 1, pixels), dw)


def stage_counts(v: Variant, i: int, c: StageChoice) -> tuple[int, int]:
    """Params and MACs of stage ``i`` (downsampling included) under choice ``c``."""
    side = IMG // 2 ** (i + 2)
    pixels, dim = side * side, v.dims[i]
    down = conv_norm(v.dims[i - 1], dim, 3, pixels) if i > 0 else (0, 0)
    num_conv = v.depths[i] - 3 * c.groups
    conv = elrf(dim, c.mlp_ratio, pixels) if num_conv else (0, 0)
    attn = attention_group(dim, c.key_ratio, c.value_ratio, pixels) if c.groups else (0, 0)
    return down[0] + num_conv * conv[0] + c.groups * attn[0], down[1] + num_conv * conv[1] + c.groups * attn[1]


def stem_counts(v: Variant) -> tuple[int, int]:
    """Two stride-2 3x3 ConvNorms, 3 -> C1/2 -> C1 (``regla.Stem``)."""
    half = v.dims[0] // 2
    return add(conv_norm(3, half, 3, (IMG // 2) ** 2), conv_norm(half, v.dims[0], 3, (IMG // 4) ** 2))


def head_counts(v: Variant, hidden: int) -> tuple[int, int]:
    """Pre-logits 1x1 conv with bias on the pooled features, then the Linear classifier."""
    pre = (v.dims[-1] * hidden + hidden, v.dims[-1] * hidden) if hidden else (0, 0)
    width = hidden or v.dims[-1]
    return pre[0] + width * NUM_CLASSES + NUM_CLASSES, pre[1] + width * NUM_CLASSES


# --- the grid ------------------------------------------------------------------------------------------------------


# Axes of the grid: stages 1-2 share one ELRF expansion (the paper treats "Stages 1 & 2" as one unit, Tables 5-7);
# stages 3 and 4 each have their own attention groups, ELRF expansion, key and value widths.
AXES: tuple[tuple[int, ...], ...] = ((0, 1), (2,), (3,))


def stage_choices(v: Variant, i: int) -> list[StageChoice]:
    """Every setting of stage ``i`` in the grid, without duplicates (no expansion when it holds no ELRF block)."""
    if i < 2:
        return [StageChoice(0, r) for r in MLP_RATIOS]
    out = []
    for g in range(1, v.depths[i] // 3 + 1):
        ratios = MLP_RATIOS if v.depths[i] > 3 * g else (4.0,)
        out += [StageChoice(g, r, k, vr) for r in ratios for k in KEY_RATIOS for vr in VALUE_RATIOS]
    return out


@dataclass
class Grid:
    """All settings of one variant as a dense product: choices per axis, head sizes, and the total counts."""

    choices: list[list[StageChoice]]
    heads: tuple[int, ...]
    params: np.ndarray  # shape (n_axis0, ..., n_heads)
    macs: np.ndarray


def axis_counts(v: Variant, stages: tuple[int, ...], choices: list[StageChoice]) -> np.ndarray:
    """(params, MACs) of the stages of one axis, one row per choice (the stages of an axis share the choice)."""
    return np.array([add(*(stage_counts(v, i, c) for i in stages)) for c in choices], dtype=np.float64)


def build_grid(v: Variant, heads: tuple[int, ...] = HEAD_SIZES) -> Grid:
    """Sum the per-axis counts over the product of all choices and head sizes (broadcasting)."""
    choices = [stage_choices(v, stages[0]) for stages in AXES]
    base = stem_counts(v)
    params, macs = np.array(float(base[0])), np.array(float(base[1]))
    for a, (stages, cs) in enumerate(zip(AXES, choices, strict=True)):
        counts = axis_counts(v, stages, cs)
        shape = [1] * (len(AXES) + 1)
        shape[a] = len(cs)
        params, macs = params + counts[:, 0].reshape(shape), macs + counts[:, 1].reshape(shape)
    head = np.array([head_counts(v, h) for h in heads], dtype=np.float64)
    return Grid(choices, heads, params + head[:, 0], macs + head[:, 1])


def setting(grid: Grid, index: tuple[int, ...]) -> dict[str, Any]:
    """Constructor arguments (``regla.models.regla.ReGLA``) of the grid point at ``index``."""
    by_stage = {i: grid.choices[a][j] for a, j in enumerate(index[:-1]) for i in AXES[a]}
    stages = [by_stage[i] for i in sorted(by_stage)]
    return dict(attn_groups=tuple(c.groups for c in stages), mlp_ratio=tuple(c.mlp_ratio for c in stages),
                key_ratio=tuple(c.key_ratio for c in stages), value_ratio=tuple(c.value_ratio for c in stages),
                head_hidden_size=grid.heads[index[-1]])


# --- front and minimax ---------------------------------------------------------------------------------------------


def errors(v: Variant, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Relative errors params/Table 1 - 1 and MACs/Table 2 - 1 of every grid point (flattened)."""
    return (grid.params.ravel() / (v.params_m * 1e6) - 1, grid.macs.ravel() / (v.gmacs * 1e9) - 1)


def pareto_front(ep: np.ndarray, em: np.ndarray) -> np.ndarray:
    """Flat indices of the points not dominated in (|ep|, |em|), ordered by increasing |params error|."""
    ap, am = np.abs(ep), np.abs(em)
    order = np.lexsort((am, ap))
    best, front = np.inf, []
    for k in order:
        if am[k] < best:
            best = am[k]
            front.append(k)
    return np.array(front, dtype=np.int64)


def minimax(ep: np.ndarray, em: np.ndarray) -> int:
    """Flat index minimising max(|ep|, |em|); ties (within 0.01 point) go to the smaller |ep| + |em|."""
    worst = np.maximum(np.abs(ep), np.abs(em))
    near = np.flatnonzero(worst <= worst.min() + 1e-4)
    return int(near[np.argmin(np.abs(ep[near]) + np.abs(em[near]))])


def thin(front: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` points of the front, spread evenly along it (both ends kept)."""
    if len(front) <= n:
        return front
    return front[np.unique(np.linspace(0, len(front) - 1, n).round().astype(int))]


# --- output --------------------------------------------------------------------------------------------------------


def fmt_setting(s: dict[str, Any]) -> str:
    """Compact text of the stage 3-4 / stage 1-4 settings."""
    def nums(xs: tuple[float, ...]) -> str:
        return "/".join(f"{x:g}" for x in xs)

    return (f"groups {nums(s['attn_groups'][2:])}, ELRF x{nums(s['mlp_ratio'])}, "
            f"key {nums(s['key_ratio'][2:])}, value {nums(s['value_ratio'][2:])}, head {s['head_hidden_size']}")


def row(v: Variant, grid: Grid, flat: int, ep: np.ndarray, em: np.ndarray) -> str:
    """One Markdown table row for the grid point ``flat``."""
    s = setting(grid, np.unravel_index(flat, grid.params.shape))
    p, m = grid.params.ravel()[flat] / 1e6, grid.macs.ravel()[flat] / 1e9
    worst = max(abs(ep[flat]), abs(em[flat]))
    return (f"| {fmt_setting(s)} | {p:.2f} | {ep[flat] * 100:+.1f}% | {m:.3f} | {em[flat] * 100:+.1f}% "
            f"| {worst * 100:.1f}% |")


def limits(v: Variant, grid: Grid, ep: np.ndarray, em: np.ndarray, tol: float = 0.01) -> list[str]:
    """The two ends of the trade-off: fewest MACs at Table 1's params, most params at Table 2's MACs (within tol)."""
    out = []
    at_params = np.flatnonzero(np.abs(ep) <= tol)
    if at_params.size:
        k = int(at_params[np.argmin(em[at_params])])
        out.append(f"fewest MACs with params within {tol:.0%} of Table 1: {row(v, grid, k, ep, em)}")
    at_macs = np.flatnonzero(np.abs(em) <= tol)
    if at_macs.size:
        k = int(at_macs[np.argmax(ep[at_macs])])
        out.append(f"most params with MACs within {tol:.0%} of Table 2: {row(v, grid, k, ep, em)}")
    return out


def floor_line(v: Variant) -> str:
    """Params and MACs of the stem and stages 1-3 at their lightest on the grid: what is left for stage 4 + head."""
    stages12 = min((add(stage_counts(v, 0, c), stage_counts(v, 1, c)) for c in stage_choices(v, 0)),
                   key=lambda t: t[1])
    stage3 = min((stage_counts(v, 2, c) for c in stage_choices(v, 2)), key=lambda t: t[1])
    p, m = add(stem_counts(v), stages12, stage3)
    return (f"stem + stages 1-3 at their lightest on the grid: {p / 1e6:.2f} M params, {m / 1e9:.3f} GMACs "
            f"(Table 2: {v.gmacs} G); at 224 px a stage-4 weight costs {(IMG // 32) ** 2} MACs, a classifier weight 1")


def report(name: str, n_front: int, heads: tuple[int, ...] = HEAD_SIZES) -> tuple[Grid, int]:
    """Print the front and the minimax choice of variant ``name``; return the grid and the chosen flat index."""
    v = VARIANTS[name]
    grid = build_grid(v, heads)
    ep, em = errors(v, grid)
    front = pareto_front(ep, em)
    best = minimax(ep, em)
    print(f"\n### regla_{name}: Table 1 {v.params_m} M, Table 2 {v.gmacs} G; {ep.size} settings, "
          f"{len(front)} on the Pareto front\n")
    print("| setting (stages 3/4; ELRF per stage 1/2/3/4) | params (M) | vs T1 | MACs (G) | vs T2 | max |")
    print("|---|---|---|---|---|---|")
    for k in thin(front, n_front):
        print(row(v, grid, int(k), ep, em))
    print()
    for line in [floor_line(v)] + limits(v, grid, ep, em):
        print(line)
    print(f"minimax: {row(v, grid, best, ep, em)}")
    return grid, best


# --- verification against the real model ---------------------------------------------------------------------------


def measure(name: str, kwargs: dict[str, Any]) -> tuple[int, int]:
    """``count_params`` / ``count_macs`` of ``timm.create_model('regla_<name>', **kwargs)``."""
    import timm

    import regla  # noqa: F401  (registers the models)
    from regla.utils import count_macs, count_params

    model = timm.create_model(f"regla_{name}", **kwargs).eval()
    return count_params(model), count_macs(model, IMG)


def verify(name: str, grid: Grid, flats: list[int]) -> bool:
    """Compare the analytic counts with the real model's on the grid points ``flats``; print each comparison."""
    ok = True
    for flat in flats:
        s = setting(grid, np.unravel_index(flat, grid.params.shape))
        p, m = measure(name, s)
        same = (p, m) == (int(grid.params.ravel()[flat]), int(grid.macs.ravel()[flat]))
        ok &= same
        print(f"verify regla_{name} [{fmt_setting(s)}]: model {p} params {m} MACs, "
              f"formula {int(grid.params.ravel()[flat])} / {int(grid.macs.ravel()[flat])} -> "
              f"{'equal' if same else 'DIFFERENT'}")
    return ok


def present(name: str) -> str:
    """Params and MACs of the variant's present ``MODEL_ARGS``, measured, against Tables 1-2."""
    v = VARIANTS[name]
    p, m = measure(name, {})
    return (f"present MODEL_ARGS: {p / 1e6:.2f} M ({(p / 1e6 / v.params_m - 1) * 100:+.1f}%), "
            f"{m / 1e9:.3f} G ({(m / 1e9 / v.gmacs - 1) * 100:+.1f}%)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--front", type=int, default=12, help="front points printed per variant (default 12)")
    parser.add_argument("--verify", type=int, default=3,
                        help="random grid points per variant checked against count_macs, besides the choice")
    parser.add_argument("--heads", type=int, nargs="+", default=list(HEAD_SIZES),
                        help=f"classifier hidden widths in the grid (default {' '.join(map(str, HEAD_SIZES))})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng, ok, t0 = random.Random(args.seed), True, time.time()
    for name in args.variants:
        grid, best = report(name, args.front, tuple(args.heads))
        picks = [best] + [rng.randrange(grid.params.size) for _ in range(args.verify)]
        ok &= verify(name, grid, picks)
        print(present(name))
    print(f"\n{time.time() - t0:.0f} s; formula {'equals' if ok else 'DIFFERS FROM'} count_params/count_macs "
          "on every checked point")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
