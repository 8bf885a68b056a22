"""How each model's ExecuTorch program is cut: XNNPACK partitions and the operators left outside them (fp32, int8).

Usage: python scripts/et_delegation.py regla_m repvit_m1_1 regla_m_sam:fuse [--size 224]

A name is a timm model (fused before lowering) or a SAM image encoder as ``regla bench --task sam`` names it
(``regla_m_sam:fuse``, ``regla_t_sam:stride1``, ``repvit_sam``); SAM encoders are lowered at --sam-size (256).
"""
import argparse

import torch

import regla  # noqa: F401  registers regla_* and repnext_*
from regla.bench.backends import Calibration
from regla.checkpoints import create_fused_model
from regla.deploy.executorch import delegation_summary, to_edge


def build(name: str, size: int, sam_size: int) -> tuple[torch.nn.Module, int]:
    """The fused eval model ``name`` and the side it is lowered at."""
    if "_sam" not in name and name not in ("repvit_sam", "mobile_sam"):
        return create_fused_model(name).eval(), size
    from timm.utils import reparameterize_model

    from regla.bench.sam import parse_spec
    from regla.sam.build import build_image_encoder

    encoder, mode = parse_spec(name)
    return reparameterize_model(build_image_encoder(encoder, sam_size, mode).eval()), sam_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=224, help="input side of classification models (px)")
    parser.add_argument("--sam-size", type=int, default=256, help="input side of SAM image encoders (px)")
    args = parser.parse_args()
    calib = Calibration(None, 4)
    for name in args.models:
        model, side = build(name, args.size, args.sam_size)
        x = torch.randn(1, 3, side, side)
        for int8 in (False, True):
            edge = to_edge(model, x, int8=int8, calib=calib.get(model, (side, side)) if int8 else None)
            partitions, outside = delegation_summary(edge.exported_program().graph)
            print(f"{name} {'int8' if int8 else 'fp32'} @{side}px: {partitions} XNNPACK partition(s); "
                  f"outside: {outside or 'nothing'}", flush=True)


if __name__ == "__main__":
    main()
