"""Which ops of each model's ExecuTorch program stay outside the XNNPACK delegate (fp32 and int8), at 224 px.

Usage: python scripts/et_delegation.py regla_m repvit_m1_1
"""
import collections
import sys
import warnings

import torch

import regla  # noqa: F401
from regla.bench.backends import Calibration
from regla.deploy.checkpoint import create_fused_model
from regla.deploy.executorch import import_executorch
from regla.deploy.quantize import quantize_pt2e

exir, part = import_executorch()
calib = Calibration(None, 4)
for name in sys.argv[1:]:
    model = create_fused_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    for int8 in (False, True):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            m = quantize_pt2e(model, x, calib.get(model, (224, 224))) if int8 else model
            ep = torch.export.export(m, (x,), strict=False)
            edge = exir.to_edge_transform_and_lower(ep, partitioner=[part()])
        c = collections.Counter()
        for n in edge.exported_program().graph.nodes:
            if n.op == "call_function":
                t = getattr(n.target, "__name__", str(n.target))
                if "getitem" not in t:
                    c["DELEGATE" if "executorch_call_delegate" in t else t] += 1
        print(name, "int8" if int8 else "fp32", dict(c.most_common()), flush=True)
