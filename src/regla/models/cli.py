"""``regla models``: every registered model of ours with params and MACs beside the paper's figures."""

from __future__ import annotations

import argparse
import sys

from regla.preflight import int_range

FAMILIES = ("regla", "repnext", "repvit_variants", "iformer_variants")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=FAMILIES, action="append",
                        help="only this model family (repeatable); default: all of ours")
    parser.add_argument("--img-size", type=int_range(32, 4096), default=224,
                        help="input side for the MAC count, 32-4096 (default 224)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (as in docs/)")
    parser.add_argument("--deploy", action="store_true",
                        help="count the reparameterized (deploy) form, as RepNeXt's Table 2 does (default: unfused)")


def model_rows(families: tuple[str, ...] = FAMILIES, img_size: int = 224,
               deploy: bool = False) -> list[dict[str, object]]:
    """One row per registered model: measured params/MACs (of the deploy form if ``deploy``) and the published
    figures its module's ``PAPER_FIGURES`` quotes (keys ``params_m``, ``gmacs``, ``top1``); then one row per paper
    ablation row its module's ``ABLATIONS`` lists (model + constructor switches, named ``family/row``). A family
    module may add timm's own models whose figures it quotes (``TIMM_MODELS``, e.g. iFormer's ``iformer_h``)."""
    import timm
    from timm.utils import reparameterize_model

    import regla.models  # noqa: F401  (registers our models)

    rows = []
    for family in families:
        family_rows = []
        family_module = sys.modules.get(f"regla.models.{family}")
        for name in timm.list_models(module=family) + list(getattr(family_module, "TIMM_MODELS", ())):
            model = timm.create_model(name).eval()
            module = family_module or sys.modules[type(model).__module__]  # the family quotes timm's models' figures
            if deploy:
                model = reparameterize_model(model)
            paper = getattr(module, "PAPER_FIGURES", {}).get(name, {})
            family_rows.append(_row(name, model, paper, img_size))
        rows += sorted(family_rows, key=lambda r: r["params_m"])
        for row, spec in getattr(sys.modules.get(f"regla.models.{family}"), "ABLATIONS", {}).items():
            model = timm.create_model(spec["model"], **spec["kwargs"]).eval()
            rows.append(_row(f"{family}/{row}", reparameterize_model(model) if deploy else model, spec, img_size))
    return rows


def _row(name: str, model: object, paper: dict[str, object], img_size: int) -> dict[str, object]:
    from regla.utils import count_macs, count_params

    return dict(model=name, params_m=count_params(model) / 1e6, gmacs=count_macs(model, img_size) / 1e9,
                paper_params_m=paper.get("params_m"), paper_gmacs=paper.get("gmacs"), paper_top1=paper.get("top1"))


def _delta(measured: float, paper: float | None) -> str:
    return "" if not paper else f"{(measured / paper - 1) * 100:+.1f}%"


def format_rows(rows: list[dict[str, object]], img_size: int, markdown: bool) -> str:
    head = ["model", "params (M)", "paper (M)", "diff", f"MACs@{img_size} (G)", "paper (G)", "diff", "paper top-1"]
    body = []
    for r in rows:
        pp, pm = r["paper_params_m"], r["paper_gmacs"]
        body.append([r["model"], f"{r['params_m']:.2f}", f"{pp}" if pp else "-", _delta(r["params_m"], pp),
                     f"{r['gmacs']:.3f}", f"{pm}" if pm and img_size == 224 else "-",
                     _delta(r["gmacs"], pm) if img_size == 224 else "",
                     f"{r['paper_top1']}" if r.get("paper_top1") else "-"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*row) for row in body])


def run(args: argparse.Namespace) -> int:
    families = tuple(args.family) if args.family else FAMILIES
    rows = model_rows(families, args.img_size, getattr(args, "deploy", False))
    print(format_rows(rows, args.img_size, args.markdown))
    if not args.markdown:
        form = "reparameterized (deploy) form" if getattr(args, "deploy", False) else "unfused model"
        print(f"\nparams: all parameters of the {form}; MACs: torch.utils.flop_counter FLOPs / 2, batch 1, {form} in "
              "eval mode; paper: each module's PAPER_FIGURES (ReGLA Tables 1-2; RepNeXt Table 2, which counts the "
              "deploy form: use --deploy); paper top-1: ImageNet-1K without distillation, except ablation rows "
              "(RepNeXt Table 5: 120 epochs; RepViT Tables 6-7: distilled, see docs/training.md).")
    return 0
