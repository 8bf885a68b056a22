"""Cheap checks of image files before any work: the header (format, size) read with PIL, and a PNG's last chunk.

:func:`probe` opens a file without decoding its pixels: it reads the header (so a non-image or a header-less file
is found) and, for a PNG, checks that the file ends with its ``IEND`` chunk (so a truncated download is found
without a full decode). A file that passes can still fail to decode (a corrupt body): :func:`decode` then raises
a :class:`~regla.data.errors.DataError` naming the file and its entry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["Undecodable", "Unreadable", "decode", "describe", "probe"]

PNG_END = b"IEND\xaeB`\x82"


class Unreadable(Exception):
    """An image file that cannot be used; the message says why."""


class Undecodable(DataError):
    """A file whose header read but whose pixels do not decode (exit 2, naming the file and its entry)."""


def describe(error: BaseException) -> str:
    """The error's type and first line."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL can read"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def probe(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the header of ``path``; :class:`Unreadable` when it is not an image PIL can read
    or a PNG that stops before its ``IEND`` chunk."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            with Image.open(f) as im:
                size, fmt = im.size, im.format
            if fmt == "PNG":
                f.seek(max(0, f.seek(0, 2) - 64))
                if PNG_END not in f.read():
                    raise Unreadable("truncated: the PNG ends before its IEND chunk")
    except Unreadable:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise Unreadable(describe(e)) from None
    return size


def decode(path: Path, entry: str, mode: str = "RGB") -> np.ndarray:
    """The pixels of ``path`` in ``mode`` (``None``: as stored); a DataError naming ``entry`` if decoding fails."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert(mode) if mode else im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise Undecodable(f"cannot decode {entry} {path}: {describe(e)} (its header read fine when the data were "
                        "checked; the file is corrupt)") from None
