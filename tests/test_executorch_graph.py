"""Every ReGLA variant and ReGLA-SAM encoder lowers to ExecuTorch's XNNPACK delegate as ONE partition.

An operator XNNPACK does not take (``split_with_sizes``, ``sum``, a mean over channels, ...) runs in ExecuTorch's
portable kernels and cuts the delegated graph; before RGMA used channel slices and a pooled normaliser, ReGLA-M was
cut into 13 partitions and ran slower than RepViT-M1.1 in ExecuTorch (docs/benchmarks.md). This test keeps any
later change from cutting the graph again, in fp32 and in int8 (the XNNPACK quantizer's graph).
"""

import numpy as np
import pytest
import timm
import torch
from timm.utils import reparameterize_model

import regla  # noqa: F401
from regla.deploy.calib import ImageSet
from regla.deploy.executorch import delegation_summary, lower, runner, to_edge

VARIANTS = ["regla_t", "regla_s", "regla_m", "regla_l", "regla_x"]
SAM_ENCODERS = [("regla_t_sam", "fuse"), ("regla_t_sam", "stride1")]
SIDE = 64  # stage 4 at 2x2 px: the op set, not the size, decides the partitions
# int8 lowering of a whole ReGLA-X takes minutes: int8 runs on each variant's widths and ratios with one block of
# each kind per stage (an ELRF block in every stage, one [CPE, RGMA, Conv.3] group in stages 3-4)
SHALLOW = dict(depths=(1, 1, 4, 4), attn_groups=(0, 0, 1, 1))


def _random_images(n: int = 2, side: int = SIDE) -> ImageSet:
    rng = np.random.default_rng(0)
    return ImageSet(rng.standard_normal((n, 3, side, side)).astype(np.float32), files=[])


def _partitions(model: torch.nn.Module, int8: bool) -> tuple[int, dict[str, int]]:
    x = torch.randn(1, 3, SIDE, SIDE)
    edge = to_edge(model, x, int8=int8, calib=_random_images() if int8 else None)
    return delegation_summary(edge.exported_program().graph)


@pytest.mark.slow
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("name", VARIANTS)
def test_regla_lowers_to_one_partition(name: str, int8: bool) -> None:
    model = reparameterize_model(timm.create_model(name, num_classes=10, **(SHALLOW if int8 else {})).eval())
    partitions, outside = _partitions(model, int8)
    assert (partitions, outside) == (1, {}), f"{name}: {partitions} partitions, outside XNNPACK: {outside}"


@pytest.mark.slow
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("name,mode", SAM_ENCODERS)
def test_regla_sam_encoder_lowers_to_one_partition(name: str, mode: str, int8: bool) -> None:
    from regla.sam.build import build_image_encoder
    from regla.sam.encoders import ReglaSamEncoder

    encoder = (ReglaSamEncoder(name[:-4], mode, SIDE, **SHALLOW) if int8 else build_image_encoder(name, SIDE, mode))
    encoder = reparameterize_model(encoder.eval())
    partitions, outside = _partitions(encoder, int8)
    assert (partitions, outside) == (1, {}), f"{name}:{mode}: {partitions} partitions, outside: {outside}"


@pytest.mark.slow
def test_one_partition_program_matches_eager() -> None:
    """The one-partition ReGLA program, run by ExecuTorch's runtime, gives eager's logits to 1e-4."""
    torch.manual_seed(0)
    model = timm.create_model("regla_t", num_classes=10).eval()
    with torch.no_grad():  # move BN statistics and the zero-initialised projections away from their init
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    model = reparameterize_model(model)
    x = torch.randn(1, 3, 96, 64)
    lowered = lower(model, x)
    assert lowered.partitions == 1 and lowered.portable_ops == 0
    out = runner(lowered.buffer)(x.numpy())
    with torch.inference_mode():
        ref = model(x).numpy()
    assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
