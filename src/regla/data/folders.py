"""Image-classification folders (ImageNet style: ``train/`` and ``val/``, one sub-folder per class), read by timm.

Shared by ``regla train``, ``regla eval``, ``regla knn`` and ``regla distill``: the split and class-folder checks that
run before any model is built (a missing or empty folder, or a class folder without images, is a
:class:`~regla.data.errors.DataError` naming the path), the class mapping in timm's order, :class:`SkipUnreadable`
(a thin wrapper that names and counts each undecodable image and substitutes the next readable one, so the epoch
goes on with a fixed batch shape), :class:`Shard` (every rank's part of an evaluation set, each image counted once)
and :func:`read_skipped`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .errors import DataError

TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("val", "validation", "valid", "eval", "evaluation")


def image_extensions() -> set[str]:
    """File extensions timm's folder reader picks up (``.jpg``, ``.png``, ...)."""
    from timm.data.readers.img_extensions import get_img_extensions

    return set(get_img_extensions(as_set=True))


def find_split(root: Path, split: str) -> Path:
    """``root/split``, or a synonym of it as timm's folder reader accepts (``val`` / ``validation`` ...)."""
    names = TRAIN_SPLITS if split in TRAIN_SPLITS else VAL_SPLITS if split in VAL_SPLITS else (split,)
    for name in (split, *names):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: no '{split}/' folder (expected {root}/{split}/<class>/<image>)")


def check_class_folders(split_dir: Path) -> list[str]:
    """Class names of an image folder; errors on an empty folder or a class folder with no images."""
    exts = image_extensions()
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        loose = [p for p in split_dir.iterdir() if p.suffix.lower() in exts]
        hint = " (images must sit in one sub-folder per class)" if loose else ""
        raise DataError(f"{split_dir}: no class folders{hint}")
    empty = []
    for name in classes:
        has_image = any(f.lower().endswith(tuple(exts)) for _, _, files in os.walk(split_dir / name) for f in files)
        if not has_image:
            empty.append(str(split_dir / name))
    if empty:
        raise DataError(f"class folder(s) with no images: {', '.join(empty)} "
                        f"(accepted extensions: {', '.join(sorted(exts))})")
    return classes


def class_map_for(classes: list[str]) -> dict[str, int]:
    """Class name -> index, in timm's natural-sort order, shared by train and val."""
    from timm.data.readers.reader_image_folder import natural_key

    return {c: i for i, c in enumerate(sorted(classes, key=natural_key))}


class _DatasetView(Dataset):
    """A dataset wrapped around ``self.dataset`` whose ``transform`` is the wrapped one's (timm's loader sets it)."""

    dataset: Any

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value


class SkipUnreadable(_DatasetView):
    """Wrap a timm ``ImageDataset``: an image that fails to decode is skipped, named and counted.

    The next index is returned in its place (as timm does), so batches keep their size. Each skipped file is
    logged with a warning and, when ``log_path`` is set, appended to that file, which works across loader worker
    processes and DDP ranks; :func:`read_skipped` reads it back.
    """

    def __init__(self, dataset: Any, log_path: str | os.PathLike | None = None, max_tries: int = 16):
        self.dataset = dataset
        self.log_path = Path(log_path) if log_path else None
        self.max_tries = max_tries
        self.skipped: set[str] = set()
        if hasattr(dataset, "_max_retries"):
            dataset._max_retries = 1  # let a failure reach us instead of timm's silent substitution

    def __len__(self) -> int:
        return len(self.dataset)

    def filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        return self.dataset.filename(index, basename=basename, absolute=absolute)

    def _record(self, index: int, error: Exception) -> None:
        name = str(self.filename(index, absolute=True))
        if name not in self.skipped:
            self.skipped.add(name)
            warnings.warn(f"skipped unreadable image {name}: {error}", stacklevel=2)
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.write(name + "\n")

    def _reason(self, index: int, error: Exception) -> Exception:
        """The decoder's own error for a file timm reported only as 'failed to load'."""
        from PIL import Image

        try:
            with Image.open(self.filename(index, absolute=True)) as img:
                img.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decoder error is the reason we want to show
            return e
        return error

    def __getitem__(self, index: int):
        from PIL import Image

        for _ in range(self.max_tries):
            try:
                return self.dataset[index]
            except (OSError, RuntimeError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                self._record(index, self._reason(index, e))
                index = (index + 1) % len(self.dataset)
        raise DataError(f"{self.max_tries} consecutive unreadable images, last {self.filename(index)}")


class Subset(_DatasetView):
    """The samples ``indices`` of a dataset (a few-shot bank, a rank's shard), whose ``transform`` is the dataset's."""

    def __init__(self, dataset: Any, indices: Iterable[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


class Shard(Subset):
    """Every ``world``-th sample from ``rank`` on, without padding, so distributed evaluation counts each image once."""

    def __init__(self, dataset: Any, rank: int, world: int):
        super().__init__(dataset, range(rank, len(dataset), world))


def read_skipped(log_path: str | os.PathLike) -> list[str]:
    """Files skipped so far by every worker and rank (unique, sorted)."""
    path = Path(log_path)
    if not path.is_file():
        return []
    return sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
