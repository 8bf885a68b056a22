"""Decoupled distillation of a SAM image encoder (MobileSAM §3; RepViT §4.2 trains RepViT-SAM this way).

The teacher's image embeddings (SAM ViT-H from ``sam_vit_h_4b8939.pth``) are computed once over the training images
and cached on disk; the student encoder is then trained to reproduce them with an MSE loss (8 epochs in RepViT §4.2,
on 1% of SA-1B). The prompt encoder and mask decoder are the teacher's, untouched: the exported ``.safetensors``
holds the student's ``image_encoder.*`` and, when the teacher came from a whole-SAM file, its ``prompt_encoder.*``
and ``mask_decoder.*``, i.e. a complete SAM that ``build_sam(student, checkpoint=...)`` loads strictly.

**The cache** (:class:`EmbeddingCache`): ``manifest.json`` (teacher, the SHA-256 of its weights, input size,
preprocessing, cache version, image list, shard size) and ``shard_NNNNN.safetensors`` files of ``shard_size``
embeddings each, every shard written atomically once complete. Filling it again computes only the shards not on
disk, so a killed fill loses at most one shard of work; a cache made for another teacher or other teacher weights,
size, preprocessing, version or image list is refused, not mixed. The default cache folder is named by a digest of
all that changes the embeddings, so other teacher weights get a fresh cache (:func:`default_cache_dir`). Filling
the cache (and building the teacher) draws on a forked RNG: the same seed gives the same student, cache or not.

**Data**: SA-1B's layout (``sa_N.jpg`` + ``sa_N.json`` per image: the JSON is not needed by decoupled distillation
and is ignored) or any folder of images (searched recursively). Images get SAM's own preprocessing (longest side
resized to the input size, normalised, padded bottom-right), the same for teacher and student.

The training loop, resume, torchrun/DDP, AMP, EMA, logs and checkpoints are the run harness's
(:func:`regla.runs.harness.run`); this module is the task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import WeightsInfo, load_into, read_weights
from ..config import Field, Recipe, Schema
from ..errors import UsageError
from ..outputs import atomic_write_bytes, atomic_write_text
from ..runs.config import RUN_RULES, run_fields
from ..runs.task import Built
from .build import PIXEL_MEAN, PIXEL_STD, build_image_encoder, build_sam

_logger = logging.getLogger("regla.sam")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST = "manifest.json"
#: What the embeddings depend on besides the teacher and the images: the preprocessing (:func:`preprocess`) and
#: this cache's format. Change either when the code changes what a shard holds.
PREPROCESS = "segment_anything ResizeLongestSide, SAM pixel mean/std, zero padding bottom-right"
CACHE_VERSION = 2

#: ``regla sam distill``'s recipe: RepViT §4.2 / MobileSAM (8 epochs, AdamW, cosine) plus the run harness's keys.
SCHEMA = Schema({
    "student": Field(str, "regla_m_sam"),
    "last_stage": Field(str, "fuse", choices=("stride1", "fuse")),
    "student_checkpoint": Field(str, None, nullable=True),  # ImageNet weights of the backbone (non-strict)
    "teacher": Field(str, "sam_vit_h"),
    "teacher_checkpoint": Field(str, None, nullable=True),  # whole-SAM file, e.g. sam_vit_h_4b8939.pth
    "data_dir": Field(str, None, nullable=True),
    "cache_dir": Field(str, None, nullable=True),  # default <data_dir>/.regla_sam_cache/<teacher>_<img_size>
    "img_size": Field(int, 1024, ge=64),
    "shard_size": Field(int, 64, ge=1),
    "val_images": Field(int, 16, ge=0),  # the last images of the sorted list, held out for the MSE reported
}, run_fields(epochs=8, batch_size=8, lr=1e-3, weight_decay=0.05, warmup_epochs=0, model_ema=False, workers=2,
              sched="cosine", min_lr=1e-5),
   rules=RUN_RULES, command="regla sam distill", name="SamDistillation")


def list_images(root: str | Path) -> list[Path]:
    """The images under ``root`` (recursive, sorted; SA-1B's JSON files are skipped), relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"data_dir {root}: not a folder; expected a folder of images (SA-1B's layout or any)")
    images = sorted(p.relative_to(root) for p in root.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and ".regla_sam_cache" not in p.parts)
    if not images:
        raise UsageError(f"data_dir {root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return images


def preprocess(image: np.ndarray, img_size: int) -> torch.Tensor:
    """SAM's preprocessing of an ``H x W x 3`` uint8 image: ``ResizeLongestSide``, normalise, pad to a square."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(img_size).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    x = (x - torch.tensor(PIXEL_MEAN)[:, None, None]) / torch.tensor(PIXEL_STD)[:, None, None]
    return F.pad(x, (0, img_size - x.shape[2], 0, img_size - x.shape[1]))


def load_preprocessed(path: Path, img_size: int) -> torch.Tensor:
    from .prompt import load_image

    return preprocess(load_image(path), img_size)


class EmbeddingCache:
    """Teacher embeddings of ``images`` in ``folder``, in shards of ``shard_size`` (see the module docstring)."""

    def __init__(self, folder: str | Path, root: Path, images: list[Path], teacher: str, img_size: int,
                 shard_size: int = 64, teacher_weights: str | None = None):
        self.folder, self.root, self.images = Path(folder), root, images
        self.shard_size = shard_size
        self.manifest = {"teacher": teacher, "teacher_weights": teacher_weights, "img_size": img_size,
                         "preprocess": PREPROCESS, "version": CACHE_VERSION, "shard_size": shard_size,
                         "images": [str(p) for p in images]}
        self.teacher_runs = 0  # images the teacher encoded in this process (the test of "computed once")
        self._check_manifest()

    def _check_manifest(self) -> None:
        path = self.folder / MANIFEST
        if not path.exists():
            return
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            raise UsageError(f"embedding cache {self.folder}: {path} is not a cache manifest; choose another "
                             "cache_dir or delete it")
        for key in self.manifest:
            if old.get(key) != self.manifest[key]:
                what = ("image list" if key == "images" else "teacher weights" if key == "teacher_weights"
                        else f"{key} {old.get(key)!r} (now {self.manifest[key]!r})")
                raise UsageError(f"embedding cache {self.folder} was made with another {what}; choose another "
                                 "cache_dir or delete it")

    @property
    def num_shards(self) -> int:
        return -(-len(self.images) // self.shard_size)

    def shard_path(self, shard: int) -> Path:
        return self.folder / f"shard_{shard:05d}.safetensors"

    def missing_shards(self) -> list[int]:
        return [s for s in range(self.num_shards) if not self.shard_path(s).exists()]

    def fill(self, teacher: nn.Module, device: torch.device, batch_size: int = 1) -> int:
        """Encode the images of the missing shards with ``teacher`` (eval, no grad); returns how many."""
        from safetensors.torch import save

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest))
        size = self.manifest["img_size"]
        done = 0
        teacher = teacher.eval().to(device)
        for shard in self.missing_shards():
            idx = range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.images)))
            out: dict[str, torch.Tensor] = {}
            for start in range(0, len(idx), batch_size):
                chunk = list(idx)[start:start + batch_size]
                x = torch.stack([load_preprocessed(self.root / self.images[i], size) for i in chunk]).to(device)
                with torch.inference_mode():
                    emb = teacher(x).float().cpu()
                out.update({str(i): e.contiguous() for i, e in zip(chunk, emb, strict=True)})
                self.teacher_runs += len(chunk)
            atomic_write_bytes(self.shard_path(shard), save(out))
            done += len(idx)
            _logger.info("teacher embeddings: shard %d/%d written", shard + 1, self.num_shards)
        return done

    def get(self, index: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.shard_path(index // self.shard_size)), framework="pt") as f:
            return f.get_tensor(str(index))


class DistillDataset(torch.utils.data.Dataset):
    """(SAM-preprocessed image, cached teacher embedding) pairs for ``indices`` of the cache's images."""

    def __init__(self, cache: EmbeddingCache, indices: list[int]):
        self.cache, self.indices = cache, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices[i]
        x = load_preprocessed(self.cache.root / self.cache.images[index], self.cache.manifest["img_size"])
        return x, self.cache.get(index)


def module_sha256(module: nn.Module) -> str:
    """The SHA-256 of a module's state (names and the bytes of every tensor, in order)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_fingerprint(cfg: Recipe, teacher: nn.Module | None = None) -> str:
    """What identifies the teacher's weights: a given module's state, else the checkpoint file's bytes, else the
    seed its random weights are drawn from (no checkpoint: a pipeline test)."""
    from ..outputs import file_sha256

    if teacher is not None:
        return f"module sha256 {module_sha256(teacher)}"
    if cfg.task.teacher_checkpoint:
        return f"file sha256 {file_sha256(cfg.task.teacher_checkpoint)}"
    return f"random weights, seed {cfg.run.seed}"


def default_cache_dir(cfg: Recipe, fingerprint: str = "") -> Path:
    """``cache_dir``, or ``<data_dir>/.regla_sam_cache/<teacher>_<img_size>_<digest>``: the digest covers the
    teacher's weights, the preprocessing and the cache version, so a change of any of them gets a fresh cache."""
    import hashlib

    if cfg.task.cache_dir:
        return Path(cfg.task.cache_dir)
    key = json.dumps([cfg.task.teacher, fingerprint, cfg.task.img_size, PREPROCESS, CACHE_VERSION])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cfg.task.data_dir) / ".regla_sam_cache" / f"{cfg.task.teacher}_{cfg.task.img_size}_{digest}"


class SamDistillTask:
    """MobileSAM's decoupled distillation as a task of the run harness (score: minus the held-out MSE)."""

    command = "regla sam distill"
    score_key = "neg_mse"

    def __init__(self, teacher: nn.Module | None = None) -> None:
        self.teacher = teacher  # a module to use instead of building cfg.task.teacher (tests, custom teachers)
        self.cache: EmbeddingCache | None = None
        self.val_loader: Any = None
        self.device = torch.device("cpu")
        self.decoder_state: dict[str, torch.Tensor] = {}

    def _teacher(self, cfg: Recipe) -> nn.Module:
        if self.teacher is not None:
            return self.teacher
        sam = build_sam(cfg.task.teacher, cfg.task.img_size, cfg.task.teacher_checkpoint)
        return sam.image_encoder

    def build(self, cfg: Recipe, device: torch.device, rank: int, world_size: int) -> Built:
        if not cfg.task.data_dir:
            raise UsageError("data_dir is not set: give --data DIR (SA-1B's layout or a folder of images)")
        root = Path(cfg.task.data_dir)
        images = list_images(root)
        if len(images) <= cfg.task.val_images:
            raise UsageError(f"data_dir {root}: {len(images)} images, not more than val_images={cfg.task.val_images}")
        from ..runs.harness import batch_too_large

        why = batch_too_large(len(images) - cfg.task.val_images, cfg.run.batch_size)
        if why:  # before the teacher runs over every image
            raise UsageError(f"{self.command}: {why}")
        self.device = device
        fingerprint = teacher_fingerprint(cfg, self.teacher)
        self.cache = cache = EmbeddingCache(default_cache_dir(cfg, fingerprint), root, images, cfg.task.teacher,
                                            cfg.task.img_size, cfg.task.shard_size, teacher_weights=fingerprint)
        if rank == 0 and cache.missing_shards():
            # a forked RNG: building and running the teacher must not move the student's random stream
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                cache.fill(self._teacher(cfg), device)
        if world_size > 1:
            torch.distributed.barrier()
        if cfg.task.teacher_checkpoint:
            state = read_weights(cfg.task.teacher_checkpoint).state
            self.decoder_state = {k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
        n_train = len(images) - cfg.task.val_images
        train = DistillDataset(cache, list(range(n_train)))
        sampler = torch.utils.data.DistributedSampler(train, shuffle=True) if world_size > 1 else None
        loader = torch.utils.data.DataLoader(train, batch_size=cfg.run.batch_size, shuffle=sampler is None,
                                             sampler=sampler, num_workers=cfg.run.workers, drop_last=False)
        val = DistillDataset(cache, list(range(n_train, len(images)))) if cfg.task.val_images else train
        self.val_loader = torch.utils.data.DataLoader(val, batch_size=cfg.run.batch_size, num_workers=cfg.run.workers)
        model = build_image_encoder(cfg.task.student, cfg.task.img_size, cfg.task.last_stage)
        if cfg.task.student_checkpoint:
            backbone = getattr(model, "backbone", model)
            _, report = load_into(backbone, read_weights(cfg.task.student_checkpoint), strict=False)
            _logger.info("student backbone: %s", report.summary())
        arch = {"student": cfg.task.student, "last_stage": cfg.task.last_stage, "img_size": cfg.task.img_size,
                "teacher": cfg.task.teacher}
        return Built(model=model, train_loader=loader, arch=arch)

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        x, target = (t.to(device, non_blocking=True) for t in batch)
        loss = F.mse_loss(model(x).float(), target)
        return loss, {"mse": loss.detach(), "batch_size": x.shape[0]}

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for x, target in self.val_loader:
                out = model(x.to(self.device)).float()
                total += F.mse_loss(out, target.to(self.device), reduction="sum").item()
                count += target.numel()
        mse = total / max(count, 1)
        return {"val_mse": mse, "neg_mse": -mse}

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = {f"image_encoder.{k}": v for k, v in model.state_dict().items()}
        state.update(self.decoder_state)
        return state

    def weights_info(self, model: nn.Module, cfg: Recipe) -> WeightsInfo:
        return WeightsInfo(model=cfg.task.student, input_size=(3, cfg.task.img_size, cfg.task.img_size),
                           mean=PIXEL_MEAN, std=PIXEL_STD, fused=False)

    def report(self, row: dict[str, Any]) -> None:
        _logger.info("epoch %d: train MSE %.5f | held-out MSE %.5f | lr %.3g", row["epoch"], row["train_loss"],
                     row.get("val_mse", float("nan")), row["lr"])
