"""``regla models``: every registered model of ours with params and MACs beside the paper's figures."""

from __future__ import annotations

import argparse
import sys

FAMILIES = ("regla", "repnext")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=FAMILIES, action="append",
                        help="only this model family (repeatable); default: all of ours")
    parser.add_argument("--img-size", type=int, default=224, help="input side for the MAC count (default 224)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (as in docs/)")


def model_rows(families: tuple[str, ...] = FAMILIES, img_size: int = 224) -> list[dict[str, object]]:
    """One row per registered model: measured params/MACs and the published figures its module quotes."""
    import timm

    import regla  # noqa: F401  (registers our models)
    from regla.utils import count_macs, count_params

    rows = []
    for family in families:
        family_rows = []
        for name in timm.list_models(module=family):
            model = timm.create_model(name).eval()
            module = sys.modules[type(model).__module__]
            paper = getattr(module, "PAPER_FIGURES", {}).get(name, {})
            params, macs = count_params(model) / 1e6, count_macs(model, img_size) / 1e9
            family_rows.append(dict(model=name, params_m=params, gmacs=macs,
                                    paper_params_m=paper.get("params_m"), paper_gmacs=paper.get("gmacs")))
        rows += sorted(family_rows, key=lambda r: r["params_m"])
    return rows


def _delta(measured: float, paper: float | None) -> str:
    return "" if not paper else f"{(measured / paper - 1) * 100:+.1f}%"


def format_rows(rows: list[dict[str, object]], img_size: int, markdown: bool) -> str:
    head = ["model", "params (M)", "paper (M)", "diff", f"MACs@{img_size} (G)", "paper (G)", "diff"]
    body = []
    for r in rows:
        pp, pm = r["paper_params_m"], r["paper_gmacs"]
        body.append([r["model"], f"{r['params_m']:.2f}", f"{pp}" if pp else "-", _delta(r["params_m"], pp),
                     f"{r['gmacs']:.3f}", f"{pm}" if pm and img_size == 224 else "-",
                     _delta(r["gmacs"], pm) if img_size == 224 else ""])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*row) for row in body])


def run(args: argparse.Namespace) -> int:
    families = tuple(args.family) if args.family else FAMILIES
    rows = model_rows(families, args.img_size)
    print(format_rows(rows, args.img_size, args.markdown))
    if not args.markdown:
        print("\nparams: all parameters (unfused); MACs: torch.utils.flop_counter FLOPs / 2, batch 1, "
              "unfused model in eval mode; paper: Table 1 (params) and Table 2 (GFLOPs) of each family's paper.")
    return 0
