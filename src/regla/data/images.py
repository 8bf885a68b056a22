"""Cheap checks of image files before any work: the header (format, size) read with PIL, and the file's end.

:func:`probe` opens a file without decoding its pixels: it reads the header (so a non-image or a header-less file
is found) and, for a PNG or a JPEG, checks that the file ends as a complete one does (``IEND`` chunk, ``EOI``
marker); only a file that does not is decoded, so a truncated download is found at the cost of one header read
per good file. A file that passes can still fail to decode (a corrupt body): :func:`decode` then raises a
:class:`~regla.data.errors.DataError` naming the file and its entry.
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


#: How a complete file of each format ends (after optional padding): a file that does not is decoded to be sure.
ENDINGS = {"PNG": PNG_END, "JPEG": b"\xff\xd9"}


def probe(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the header of ``path``; :class:`Unreadable` when it is not an image PIL can read,
    or a PNG / JPEG that does not end as a complete one does (``IEND`` / ``EOI``) and does not decode either
    (a truncated download). Only such files are decoded: trailing data after a complete image is harmless."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            with Image.open(f) as im:
                size, fmt = im.size, im.format
                ending = ENDINGS.get(fmt)
                if ending is not None:
                    f.seek(max(0, f.seek(0, 2) - 64))
                    if not f.read().rstrip(b"\x00\r\n ").endswith(ending):
                        f.seek(0)
                        im.load()  # raises for a truncated file
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = describe(e)
        raise Unreadable(f"truncated ({reason})" if "truncated" in reason.lower() else reason) from None
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
