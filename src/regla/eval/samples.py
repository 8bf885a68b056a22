"""Evaluation data that counts only what it read.

:class:`ReadOrMark` wraps a timm ``ImageDataset``: it decodes each image itself and, for an image that cannot be
decoded, returns an :class:`Unreadable` marker instead of a neighbouring image (as the training wrapper
``SkipUnreadable`` does to keep batch shapes); an exception raised by the transform becomes a
:class:`TransformFailed` marker, so the two are told apart. :func:`collate_readable` drops the markers from each
batch and passes them on, and :class:`CountingBatches` records the unreadable files (or, with ``strict``, stops at
the first one) and raises :class:`TransformError` for a transform failure, in the main process, with the path.
Under DDP every rank reads its own :class:`~regla.data.folders.Shard`, so each image is read, counted or skipped once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, default_collate

from regla.data.errors import DataError
from regla.data.folders import Shard
from regla.errors import RunFailure

__all__ = ["CountingBatches", "ReadOrMark", "TransformError", "TransformFailed", "Unreadable", "build_loader",
           "collate_readable", "gather_skipped", "wrap_dataset"]


class TransformError(RunFailure):
    """The evaluation transform raised on an image that was read; the message names the image."""


@dataclass(frozen=True)
class Unreadable:
    """Marker of a sample whose image could not be read or decoded."""

    path: str
    error: str


@dataclass(frozen=True)
class TransformFailed:
    """Marker of a sample whose image was decoded but the transform raised."""

    path: str
    error: str


def _describe(error: BaseException) -> str:
    """The error's type and first line (PIL's "cannot identify image file <reader>" without the reader's repr)."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image format PIL can decode"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


class ReadOrMark(Dataset):
    """A map-style timm ``ImageDataset`` whose unreadable images come back as markers, not as other images.

    The transform is this view's own (timm's ``create_loader`` sets ``transform`` on the dataset it is given); the
    wrapped dataset is only used for its reader (file, target) and its image mode.
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.transform = None
        self.target_transform = getattr(dataset, "target_transform", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def path(self, index: int) -> str:
        """The file of sample ``index`` (or its index, for readers without files)."""
        try:
            return str(self.dataset.filename(index, absolute=True))
        except Exception:  # noqa: BLE001 - readers without file names
            return f"sample {index}"

    def decode(self, index: int) -> tuple[Any, Any]:
        """The decoded image and target of sample ``index``; raises whatever the reader or decoder raises."""
        from PIL import Image

        sample, target, *_ = self.dataset.reader[index]
        if isinstance(sample, Image.Image):
            image = sample
        else:
            try:
                with Image.open(sample) as opened:
                    image = opened.convert(getattr(self.dataset, "input_img_mode", None) or "RGB")  # decodes
            finally:
                if hasattr(sample, "close"):
                    sample.close()
        if getattr(self.dataset, "input_img_mode", None) and image.mode != self.dataset.input_img_mode:
            image = image.convert(self.dataset.input_img_mode)
        return image, target

    def __getitem__(self, index: int) -> tuple[Any, int] | Unreadable | TransformFailed:
        try:
            image, target = self.decode(index)
        except Exception as e:  # noqa: BLE001 - whatever the decoder raises, the file is unreadable
            return Unreadable(self.path(index), _describe(e))
        try:
            if self.transform is not None:
                image = self.transform(image)
        except Exception as e:  # noqa: BLE001 - reported with the image's path in the main process
            return TransformFailed(self.path(index), _describe(e))
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def wrap_dataset(dataset: Any) -> Any:
    """:class:`ReadOrMark` around a map-style timm dataset; iterable datasets (tfds, wds) are returned as they are."""
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "reader"):
        return dataset
    return ReadOrMark(dataset)


def collate_readable(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[Unreadable | TransformFailed]]:
    """``default_collate`` of the samples that were read; the markers of the others, passed on as a list."""
    kept = [s for s in batch if not isinstance(s, (Unreadable, TransformFailed))]
    marks = [s for s in batch if isinstance(s, (Unreadable, TransformFailed))]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), marks
    images, targets = default_collate([tuple(s[:2]) for s in kept])
    return images, targets, marks


class CountingBatches:
    """Iterate ``(images, targets)`` of a :func:`collate_readable` loader, recording the files it could not read.

    ``skipped`` maps each unreadable file to the decoder's error. ``strict``: the first unreadable file stops the
    evaluation (:class:`~regla.data.errors.DataError`). A transform failure always stops it (:class:`TransformError`).
    """

    def __init__(self, loader: Any, strict: bool = False):
        self.loader = loader
        self.strict = strict
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.loader)

    def _note(self, mark: Unreadable | TransformFailed) -> None:
        if isinstance(mark, TransformFailed):
            raise TransformError(f"transform error on image {mark.path}: {mark.error} (the file was read; the "
                                 "evaluation transform failed on it)")
        if self.strict:
            raise DataError(f"unreadable image {mark.path}: {mark.error} (--strict stops at the first one)")
        self.skipped[mark.path] = mark.error

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            images, targets, marks = batch if len(batch) == 3 else (*batch, [])
            for mark in marks:
                self._note(mark)
            if targets.numel():
                yield images, targets


def build_loader(dataset: Any, config: dict[str, Any], *, batch_size: int, workers: int, device: torch.device,
                 rank: int = 0, world: int = 1) -> Any:
    """timm's evaluation loader (resize to ``size / crop_pct``, centre crop) over this rank's shard of ``dataset``.

    ``config`` is a timm data config (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
    ``crop_mode``). Markers travel through :func:`collate_readable`; normalisation happens in the transform (no
    GPU prefetcher, whose batches are image/target pairs only).
    """
    from timm.data import create_loader

    if world > 1 and not isinstance(dataset, IterableDataset):
        dataset = Shard(dataset, rank, world)
    collate = None if isinstance(dataset, IterableDataset) else collate_readable
    return create_loader(
        dataset, input_size=config["input_size"], batch_size=batch_size, is_training=False,
        interpolation=config["interpolation"], mean=tuple(config["mean"]), std=tuple(config["std"]),
        crop_pct=config["crop_pct"], crop_mode=config.get("crop_mode"), num_workers=workers, distributed=False,
        collate_fn=collate, pin_memory=device.type == "cuda", device=device, use_prefetcher=False,
        persistent_workers=False,
    )


def gather_skipped(skipped: dict[str, str]) -> dict[str, str]:
    """Every rank's unreadable files (the argument itself when not distributed), sorted by path."""
    import torch.distributed as dist

    merged = dict(skipped)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, skipped)
        merged = {k: v for part in parts for k, v in part.items()}
    return dict(sorted(merged.items()))

