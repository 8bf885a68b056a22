"""regla.sam: image encoders (RepViT-SAM as released, ReGLA-SAM, MobileSAM's TinyViT), whole-SAM weights, prompting.

The released RepViT-SAM layout is checked against ``fixtures/repvit_sam_release_keys.json``, made from the release's
own model code (``fixtures/make_repvit_sam_fixture.py``): its key list, parameter count and its output for
generated weights. Small inputs (64-256 px) keep these tests fast; the full 1024 px encoder runs once.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.utils import reparameterize_model

from regla.checkpoints import CheckpointError, read_weights
from regla.errors import UsageError
from regla.sam.build import build_image_encoder, build_sam, load_sam_weights
from regla.sam.encoders import FuseProjection, ReglaSamEncoder, repvit_sam_release_to_timm
from regla.sam.prompt import check_box, check_point, predict_mask, to_rgb

FIXTURES = Path(__file__).parent / "fixtures"
RELEASE = json.loads((FIXTURES / "repvit_sam_release_keys.json").read_text())
_spec = importlib.util.spec_from_file_location("make_repvit_sam_fixture", FIXTURES / "make_repvit_sam_fixture.py")
fixture_tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture_tools)

MOBILE = json.loads((FIXTURES / "mobile_sam_release_keys.json").read_text())
_spec = importlib.util.spec_from_file_location("make_mobile_sam_fixture", FIXTURES / "make_mobile_sam_fixture.py")
mobile_tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mobile_tools)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sam_decoder_state() -> dict[str, torch.Tensor]:
    """``prompt_encoder.*`` and ``mask_decoder.*`` as SAM builds them (segment_anything's own modules and settings)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                                                                                 mlp_dim=2048, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    state = {f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()}
    state.update({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()})
    return state


@functools.cache
def release_checkpoint_encoder() -> dict[str, torch.Tensor]:
    """The fixture's generated weights for the release's image encoder (``features.*``, ``neck.*``), float64."""
    return fixture_tools.random_state_dict(RELEASE["keys"], RELEASE["reference"]["seed_weights"])


def release_checkpoint() -> dict[str, torch.Tensor]:
    """A whole-SAM state dict in the released repvit_sam.pt layout, with the fixture's generated encoder weights."""
    encoder = release_checkpoint_encoder()
    return {**{f"image_encoder.{k}": v for k, v in encoder.items()}, **sam_decoder_state()}


def perturb_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and affine parameters, so that fusing BN is not an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return module.eval()


# ---------------------------------------------------------------------------------------------------------------
# RepViT-SAM as released
# ---------------------------------------------------------------------------------------------------------------


def test_repvit_sam_encoder_has_the_released_size_and_output_shape():
    encoder = build_image_encoder("repvit_sam").eval()
    assert encoder.img_size == 1024
    assert n_params(encoder) == RELEASE["params"] == 23_158_920
    with torch.no_grad():  # shapes only: on the meta device nothing is computed
        out = encoder.to("meta")(torch.empty(1, 3, 1024, 1024, device="meta"))
    assert out.shape == (1, 256, 64, 64)


def test_release_layout_loads_strictly_and_computes_what_the_release_computes(tmp_path):
    path = tmp_path / "repvit_sam.pt"
    torch.save(release_checkpoint(), path)
    sam = build_sam("repvit_sam", img_size=64).double()  # float64, as the fixture's release run
    report = load_sam_weights(sam, read_weights(path))  # strict, through regla.checkpoints
    assert report.ok and "RepViT-SAM release layout" in report.source
    ref = RELEASE["reference"]
    x = fixture_tools.reference_input()
    with torch.no_grad():
        out = sam.image_encoder(x)
    assert list(out.shape) == ref["output_shape"]
    np.testing.assert_allclose(out.flatten()[:16].numpy(), ref["output_first16"], rtol=1e-9, atol=1e-9)
    assert out.sum().item() == pytest.approx(ref["output_sum"], rel=1e-9, abs=1e-8)
    assert out.abs().sum().item() == pytest.approx(ref["output_abs_sum"], rel=1e-9)


def test_release_mapping_covers_every_key_once():
    state = release_checkpoint()
    mapped = repvit_sam_release_to_timm(state)
    assert len(mapped) == len(state)
    assert not any(".features." in k for k in mapped)
    sam = build_sam("repvit_sam", img_size=64)
    assert set(mapped) == set(sam.state_dict())


def test_release_layout_that_does_not_fit_is_refused():
    sam = build_sam("repvit_sam", img_size=64)
    state = release_checkpoint()
    missing = {k: v for k, v in state.items() if not k.startswith("image_encoder.features.54.")}
    with pytest.raises(CheckpointError, match="missing in the file: .*image_encoder.backbone.stages.3.blocks.1"):
        load_sam_weights(sam, missing)
    extra = dict(state, **{"image_encoder.features.55.token_mixer.0.conv.c.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unused.*features.55"):
        load_sam_weights(sam, extra)
    report = load_sam_weights(sam, missing, strict=False)
    assert report.missing and not report.unused


def test_repvit_sam_fused_equals_unfused():
    encoder = build_image_encoder("repvit_sam", img_size=64).eval()  # timm's fuse() builds float32 convs
    encoder.load_state_dict(repvit_sam_release_to_timm(release_checkpoint_encoder()), strict=True)
    x = fixture_tools.reference_input().float()
    with torch.no_grad():
        ref = encoder(x)
        fused = reparameterize_model(encoder)
        out = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.backbone.modules())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# ReGLA-SAM and MobileSAM's TinyViT
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("last_stage", ["stride1", "fuse"])
def test_regla_sam_reaches_one_sixteenth_and_fuses(last_stage):
    encoder = perturb_(build_image_encoder("regla_t_sam", img_size=256, last_stage=last_stage))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ref = encoder(x)
        out = reparameterize_model(encoder)(x)
    assert ref.shape == (1, 256, 16, 16)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    stage4 = encoder.backbone.stages[3].downsample.conv.stride
    assert stage4 == ((1, 1) if last_stage == "stride1" else (2, 2))


def test_neck_layernorm_equals_sams():
    """The neck's LayerNorm2d (channel means as global pooling, for XNNPACK) computes SAM's LayerNorm2d."""
    from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d

    from regla.sam.encoders import LayerNorm2d

    torch.manual_seed(0)
    ours, sams = LayerNorm2d(32), SamLayerNorm2d(32)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    sams.load_state_dict(ours.state_dict())
    x = torch.randn(2, 32, 5, 7) * 3 + 1
    torch.testing.assert_close(ours(x), sams(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours(x.to(memory_format=torch.channels_last)), sams(x), rtol=0, atol=1e-6)


def test_regla_sam_fuse_mode_reads_stages_3_and_4():
    encoder = perturb_(ReglaSamEncoder("regla_t", last_stage="fuse", img_size=256))
    assert isinstance(encoder.neck[0], FuseProjection)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        x16, x32 = encoder.backbone.forward_intermediates(x, indices=[2, 3], intermediates_only=True)
        assert x16.shape[-1] == 16 and x32.shape[-1] == 8
        # the lateral sum equals one 1x1 conv on [x16, upsampled x32] (the FPN-style fusion the docs describe)
        up = torch.nn.functional.interpolate(x32, size=(16, 16), mode="bilinear", align_corners=False)
        w = torch.cat([encoder.neck[0].proj16.weight, encoder.neck[0].proj32.weight], dim=1)
        joint = torch.nn.functional.conv2d(torch.cat([x16, up], dim=1), w)
        torch.testing.assert_close(encoder.neck[0]([x16, x32]), joint, rtol=1e-4, atol=1e-4)
        # and the output depends on stage 4
        before = encoder(x)
        encoder.neck[0].proj32.weight.zero_()
        assert not torch.allclose(encoder(x), before, atol=1e-3)


def test_regla_sam_backbone_takes_an_imagenet_checkpoint_of_the_same_model():
    import timm

    from regla.checkpoints import load_into

    classifier = timm.create_model("regla_t")
    encoder = ReglaSamEncoder("regla_t", img_size=256)
    _, report = load_into(encoder.backbone, classifier.state_dict(), strict=False)
    assert not report.missing and not report.mismatched
    assert report.unused and all(k.startswith(("head", "pre_logits")) for k in report.unused)


def test_mobile_sam_tinyvit_5m():
    encoder = perturb_(build_image_encoder("mobile_sam", img_size=256))
    # MobileSAM's encoder without its unused classifier (norm_head, head), counted from its code
    assert n_params(encoder) == MOBILE["params_without_classifier"] == 5_743_892
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ref = encoder(x)
        out = reparameterize_model(encoder)(x)
    assert ref.shape == (1, 256, 16, 16)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_mobile_sam_release_layout_loads_strictly_and_computes_what_the_release_computes(tmp_path):
    encoder = mobile_tools.random_state_dict(MOBILE["keys"], MOBILE["reference"]["seed_weights"])
    path = tmp_path / "mobile_sam.pt"
    torch.save({**{f"image_encoder.{k}": v for k, v in encoder.items()}, **sam_decoder_state()}, path)
    sam = build_sam("mobile_sam", img_size=256).double()
    report = load_sam_weights(sam, read_weights(path))  # strict; the unused classifier is dropped by the mapping
    assert report.ok and "MobileSAM release layout" in report.source
    ref = MOBILE["reference"]
    with torch.no_grad():
        out = sam.image_encoder(mobile_tools.reference_input())
    assert list(out.shape) == ref["output_shape"]
    np.testing.assert_allclose(out.flatten()[:16].numpy(), ref["output_first16"], rtol=1e-9, atol=1e-9)
    assert out.abs().sum().item() == pytest.approx(ref["output_abs_sum"], rel=1e-9)


def test_build_sam_checks_its_arguments():
    with pytest.raises(UsageError, match="unknown SAM encoder 'regla_q_sam'.*expected one of"):
        build_sam("regla_q_sam")
    with pytest.raises(UsageError, match="multiple of 16"):
        build_sam("regla_t_sam", img_size=250)
    with pytest.raises(UsageError, match="last_stage"):
        build_sam("regla_t_sam", img_size=256, last_stage="stride2")


# ---------------------------------------------------------------------------------------------------------------
# Prompting through SamPredictor
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regla_sam():
    torch.manual_seed(0)
    return build_sam("regla_t_sam", img_size=256)


def test_box_and_point_prompts_give_masks_of_the_image_size(regla_sam):
    from segment_anything import SamPredictor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    predictor = SamPredictor(regla_sam)
    box = predict_mask(predictor, image, box=(20, 10, 150, 100))
    point = predict_mask(predictor, None, point=(60, 50))  # same image, prompted again
    both = predict_mask(predictor, None, box=(20, 10, 150, 100), point=(60, 50))
    for pred in (box, point, both):
        assert pred.mask.shape == (120, 200) and pred.mask.dtype == bool
        assert np.isfinite(pred.score)
    assert box.box == (20.0, 10.0, 150.0, 100.0) and point.point == (60.0, 50.0)


def test_grayscale_and_rgba_images_are_converted(regla_sam):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(to_rgb(gray), np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.concatenate([rgb, np.full((64, 96, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb(rgba), rgb)  # alpha dropped, colours kept
    a = predict_mask(regla_sam, rgba, box=(5, 5, 60, 50))
    b = predict_mask(regla_sam, rgb, box=(5, 5, 60, 50))
    np.testing.assert_array_equal(a.mask, b.mask)
    assert predict_mask(regla_sam, gray, point=(10, 10)).mask.shape == (64, 96)
    with pytest.raises(UsageError, match="H x W x 4"):
        to_rgb(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(UsageError, match="uint8"):
        to_rgb(np.zeros((8, 8, 3), np.float32))


def test_bad_prompts_are_refused_with_what_was_expected():
    hw = (100, 200)
    with pytest.raises(UsageError, match="empty box .*x1 < x2"):
        check_box((50, 10, 50, 60), hw)
    with pytest.raises(UsageError, match="empty box"):
        check_box((60, 10, 50, 60), hw)
    with pytest.raises(UsageError, match="outside the 200x100 image"):
        check_box((210, 10, 300, 60), hw)
    assert check_box((-5, -5, 250, 50), hw) == (0.0, 0.0, 200.0, 50.0)  # reaching over the border: clipped
    with pytest.raises(UsageError, match=r"point \(200,10\) lies outside the 200x100 image"):
        check_point((200, 10), hw)
    with pytest.raises(UsageError, match="outside"):
        check_point((-1, 10), hw)
    assert check_point((199.5, 99), hw) == (199.5, 99.0)


def test_a_prompt_outside_the_image_fails_before_the_decoder(regla_sam):
    image = np.zeros((50, 80, 3), np.uint8)
    with pytest.raises(UsageError, match="outside the 80x50 image"):
        predict_mask(regla_sam, image, point=(100, 10))
    with pytest.raises(UsageError, match="give a prompt"):
        predict_mask(regla_sam, image)


def test_automatic_mask_generator_runs_on_a_regla_encoder(regla_sam):
    from segment_anything import SamAutomaticMaskGenerator

    image = np.random.default_rng(2).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    generator = SamAutomaticMaskGenerator(regla_sam, points_per_side=4, pred_iou_thresh=-10.0,
                                          stability_score_thresh=0.0, box_nms_thresh=1.0)
    masks = generator.generate(image)
    assert masks and all(m["segmentation"].shape == (64, 96) for m in masks)


# ---------------------------------------------------------------------------------------------------------------
# Prompts from ground-truth masks and their mIoU (SAM §7.1 protocols)
# ---------------------------------------------------------------------------------------------------------------


def rect(h: int, w: int, y: int, x: int, rh: int, rw: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y:y + rh, x:x + rw] = True
    return m


def test_interior_point_is_the_centre_of_a_box_and_inside_a_ring():
    from regla.sam.prompt import interior_point, mask_box

    assert interior_point(rect(50, 80, 10, 20, 21, 31)) == (35.5, 20.5)
    yy, xx = np.mgrid[:81, :81]
    r = np.hypot(yy - 40, xx - 40)
    ring = (r >= 20) & (r <= 34)  # the centroid (40, 40) lies in the hole
    x, y = interior_point(ring)
    assert ring[int(y), int(x)]
    assert interior_point(rect(20, 20, 0, 0, 20, 4))[0] in (1.5, 2.5)  # the image border counts as boundary
    assert mask_box(rect(50, 80, 10, 20, 21, 31)) == (20.0, 10.0, 51.0, 31.0)


class OraclePredictor:
    """Stands in for SamPredictor: answers each prompt with its ground-truth mask, shifted ``shift`` px right."""

    def __init__(self, masks, shift=0):
        self.masks, self.shift = masks, shift
        self.is_image_set = False

    def set_image(self, image, image_format="RGB"):
        self.original_size, self.is_image_set = image.shape[:2], True

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        from regla.sam.prompt import mask_box

        if box is not None:
            gt = next(m for m in self.masks if np.allclose(mask_box(m), box))
        else:
            x, y = point_coords[0]
            gt = next(m for m in self.masks if m[int(y), int(x)])
        out = np.roll(gt, self.shift, axis=1)
        return out[None], np.array([0.9]), None


def test_prompted_miou_is_100_for_the_ground_truth_and_drops_as_expected_when_shifted():
    from segment_anything import SamPredictor

    from regla.sam import prompt

    masks = [rect(60, 100, 5, 5, 20, 30), rect(60, 100, 30, 50, 25, 40)]
    image = np.zeros((60, 100, 3), np.uint8)
    for kind in ("box", "point"):
        miou, ious = prompt.prompted_miou(_as_predictor(SamPredictor, masks), image, masks, prompt=kind)
        assert miou == pytest.approx(100.0) and len(ious) == 2
        miou, ious = prompt.prompted_miou(_as_predictor(SamPredictor, masks, shift=6), image, masks, prompt=kind)
        assert ious == pytest.approx([(30 - 6) / (30 + 6), (40 - 6) / (40 + 6)])  # w x h shifted by k: (w-k)/(w+k)


def _as_predictor(base, masks, shift=0):
    """An OraclePredictor that passes ``isinstance(_, SamPredictor)``."""
    oracle = OraclePredictor(masks, shift)
    oracle.__class__ = type("OracleSamPredictor", (OraclePredictor, base), {})
    return oracle
