"""What the XNNPACK graph cuts cost: ``regla bench`` with ``regla_m_cuts`` registered beside ``regla_m``.

``regla_m_cuts`` is ReGLA-M with RGMA written as it was before issue 21: ``torch.split``/``chunk`` for Q, K, V, G
and ``sum`` for the normaliser of Eq. (3). Same weights, same outputs (to float rounding), but ExecuTorch's XNNPACK
delegate takes neither op, so its program is cut into 13 partitions where ``regla_m``'s is one
(``python scripts/et_delegation.py regla_m regla_m_cuts``). Every argument goes to ``regla bench``:

    python scripts/et_cuts.py --models regla_m regla_m_cuts repvit_m1_1 --resolutions 512 --threads 1 \\
        --backends executorch executorch-int8 --no-memory -o bench_out/et_cuts
"""
import sys

import torch
import torch.nn.functional as F
from timm.models import register_model

from regla.models import regla as R


class RGMACuts(R.RGMA):
    """RGMA with the operators it used before issue 21 (``split``, ``chunk``, ``sum``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        dk, dv = self.key_dim, self.value_dim
        y = self.qkvg(x)
        if self.gating == "none":
            q, k, v = torch.split(y, [dk, dk, dv], dim=1)
            g = None
        else:
            q, k, vg = torch.split(y, [dk, dk, 2 * dv], dim=1)
            v, g = torch.sigmoid(vg).chunk(2, dim=1) if self.gating == "gate" else vg.chunk(2, dim=1)
            g = g if self.gating == "gate" else torch.sigmoid(g)
        q, k, v = F.relu(q.flatten(2)), F.relu(k.flatten(2)), v.flatten(2)
        num = torch.bmm(torch.bmm(v, k.transpose(1, 2)), q)
        den = torch.bmm(k.sum(dim=2, keepdim=True).transpose(1, 2), q)
        out = (num / (den + self.eps)).reshape(b, dv, h, w)
        return self.proj(out if g is None else out * g)


@register_model
def regla_m_cuts(pretrained: bool = False, **kwargs) -> R.ReGLA:
    """ReGLA-M whose RGMA modules use split/chunk/sum (the graph before issue 21)."""
    model = R.regla_m(pretrained=pretrained, **kwargs)
    for m in model.modules():
        if type(m) is R.RGMA:
            m.__class__ = RGMACuts
    return model


if __name__ == "__main__":
    from regla.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
