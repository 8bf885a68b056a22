"""Safe outputs: every ``regla`` command that writes a file or a folder writes it through this module.

The promises (``docs/reliability.md``):

* **Atomic.** An output appears complete or not at all: it is written to a temporary sibling (same folder, so the
  final rename stays on one file system), flushed to disk, then renamed onto its name. On any failure, Ctrl-C
  included, the temporary is removed and a previous output of that name is left as it was.
* **Nothing else is touched.** A folder given where a file is expected receives the file inside it under its
  default name (:func:`resolve_output`); an existing output is replaced only by a complete output of the same kind
  (a file by a file, a ``.mlpackage`` by a ``.mlpackage``); nothing is ever deleted that this call did not create,
  apart from the replaced output itself.
* **Never another's file.** Before any work, :func:`check_new_output` refuses an output path that is one of the
  command's inputs, or that holds a file this kind of output does not recognise as its own *by content*: a JSON
  report carries ``"written_by"`` (:func:`json_written_by`), a PNG a ``Software`` text chunk
  (:func:`png_written_by`), a file written beside a report the report's SHA-256 of it (:func:`receipt_holds`).
  A command writing several files into a folder checks the folder with :func:`check_output_folder`.
* **The user's permissions.** Files get ``0o666 & ~umask`` (``mkstemp`` alone would create them ``0o600``).
* **Clear failures.** A full disk (ENOSPC) is a :class:`~regla.errors.RunFailure` (exit 1); a folder that cannot be
  written (EACCES, EROFS) is a :class:`~regla.errors.UsageError` (exit 2); each is one line naming the path.
  :func:`check_writable` runs the same checks before any work starts.

Standard library only: importing this module imports no torch.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ReglaError, RunFailure, UsageError

__all__ = ["MIN_FREE_BYTES", "PNG_WRITER_KEY", "WRITTEN_BY", "atomic_output", "atomic_write_bytes",
           "atomic_write_text", "check_new_output", "check_not_clobbering", "check_output_folder",
           "check_report_folder", "check_writable", "file_sha256", "json_written_by", "os_error", "png_info",
           "png_text", "png_written_by", "receipt_holds", "resolve_output", "write_report_files"]

#: Free space :func:`check_writable` asks for by default (an export or a bench report needs far less).
MIN_FREE_BYTES = 16 * 2**20

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def os_error(e: OSError, path: str | os.PathLike) -> ReglaError:
    """The :mod:`regla.errors` type for an ``OSError`` raised while writing ``path``, with a one-line message.

    No space left is a :class:`RunFailure` (exit 1); a place the user cannot write (permissions, a read-only file
    system, a file where a folder belongs) a :class:`UsageError` (exit 2); anything else a :class:`RunFailure`.
    """
    reason = e.strerror or str(e)
    if e.errno in _NO_SPACE:
        return RunFailure(f"cannot write {path}: no space left on the device ({reason})")
    if e.errno in _NOT_ALLOWED:
        return UsageError(f"cannot write {path}: {reason}")
    return RunFailure(f"cannot write {path}: {reason}")


def current_umask() -> int:
    """The process umask (read by setting and restoring it: ``os`` offers no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk; best effort for folders (some file systems refuse)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename) and return the path."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise os_error(e, path) from e
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise os_error(e, path) from e
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _check_replaceable(path: Path, directory: bool, same_kind: Callable[[Path], bool] | None) -> None:
    """Refuse to replace an existing ``path`` of another kind than the output about to be written there."""
    if not (path.exists() or path.is_symlink()):
        return
    if not directory and path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    if directory and not (path.is_dir() and (same_kind is None or same_kind(path))):
        what = "a folder of another kind" if path.is_dir() else "a file"
        raise UsageError(f"{path} exists and is {what}: refusing to replace it (choose another output)")


def _swap_dir(staged: Path, path: Path, scratch: Path) -> None:
    """Move the complete folder ``staged`` onto ``path``; a previous ``path`` goes to ``scratch`` (ours) first."""
    old = scratch / (path.name + ".replaced")
    if path.exists():
        os.rename(path, old)
    try:
        os.rename(staged, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.rename(old, path)  # put the previous output back
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, directory: bool = False,
                  same_kind: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """For writers that need a path (``torch.onnx.export``, ``savefig``, a Core ML ``.mlpackage`` folder).

    Yields a path with the same name inside a fresh temporary folder next to ``path``; when the block ends without
    an error, the written file (or folder, ``directory=True``) is flushed and renamed onto ``path``. On any error,
    Ctrl-C included, the temporary folder is removed and ``path`` is left as it was. An existing ``path`` is
    replaced only by an output of its kind: a file by a file; a folder by a folder for which ``same_kind(path)``
    holds (a ``.mlpackage`` with its ``Manifest.json``, say). ``OSError`` becomes :func:`os_error`'s type.

    >>> with atomic_output("model.onnx") as tmp:      # doctest: +SKIP
    ...     torch.onnx.export(model, (x,), str(tmp))
    """
    path = Path(path)
    _check_replaceable(path, directory, same_kind)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise os_error(e, path) from e
    staged = scratch / path.name
    try:
        yield staged
        if not (staged.is_dir() if directory else staged.is_file()):
            raise RunFailure(f"cannot write {path}: the writer produced no {'folder' if directory else 'file'}")
        if directory:
            _swap_dir(staged, path, scratch)
        else:
            _fsync_path(staged)
            os.replace(staged, path)
        _fsync_path(path.parent)
    except OSError as e:
        raise os_error(e, path) from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve_output(path: str | os.PathLike | None, default_name: str, *, directory: bool = False) -> Path:
    """Where an output named by the user goes; the **folder rule**.

    * no path: ``default_name`` in the current folder;
    * an existing folder, or a path ending in ``/``: ``default_name`` inside it (``-o .`` writes ``./<default>``,
      it never replaces the folder);
    * anything else: the path itself.

    A folder output (``directory=True``, e.g. ``x.mlpackage``) that already exists with the default name's suffix
    is the output itself, to be replaced, not a folder to write into.
    """
    if path is None or str(path) == "":
        return Path(default_name)
    text = os.fspath(path)
    p = Path(text)
    same_kind_folder = directory and p.suffix and p.suffix == Path(default_name).suffix
    if text.endswith(("/", os.sep)) or (p.is_dir() and not same_kind_folder):
        return p / default_name
    return p


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_writable(path: str | os.PathLike, need_bytes: int = MIN_FREE_BYTES) -> Path:
    """Before any work: can ``path`` be written? Its folder exists or can be created, is writable, has space.

    Raises :class:`UsageError` (a file in the way, no permission, a read-only file system) or :class:`RunFailure`
    (less than ``need_bytes`` free). Returns ``path``. Creates nothing.
    """
    path = Path(path)
    folder = _nearest_existing(path.absolute().parent)
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: {folder} is not writable (permissions or a read-only file system)")
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise RunFailure(f"cannot write {path}: only {free / 2**20:.1f} MiB free on the device of {folder}")
    return path


def check_not_clobbering(path: str | os.PathLike, force: bool = False,
                         same_kind: Callable[[Path], bool] | None = None) -> None:
    """Refuse to replace an existing ``path`` unless ``force`` or ``same_kind(path)`` (an older output of ours).

    Raises :class:`UsageError` naming the path and ``--force``.
    """
    path = Path(path)
    if force or not (path.exists() or path.is_symlink()) or (same_kind is not None and same_kind(path)):
        return
    what = "a folder" if path.is_dir() else "a file"
    raise UsageError(f"{path} exists ({what} of another kind); pass --force to replace it, or choose another output")


#: The key by which a JSON report of regla's names the command that wrote it (``"written_by": "regla det eval"``).
WRITTEN_BY = "written_by"
#: The key of a report's SHA-256 digests of the files written beside it (``{"results.json": "<hex>"}``).
RECEIPT = "files_sha256"
#: The PNG text chunk that names the command that drew an image (``Software: regla det predict``).
PNG_WRITER_KEY = "Software"


def png_info(writer: str) -> Any:
    """PIL's PNG metadata naming ``writer`` (:data:`PNG_WRITER_KEY`): how a later run knows the file as its own
    output (:func:`png_written_by`)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_WRITER_KEY, writer)
    return info


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def json_written_by(path: str | os.PathLike, writer: str) -> bool:
    """Whether ``path`` is a JSON object that ``writer`` wrote (its :data:`WRITTEN_BY` says so)."""
    data = _json(Path(path))
    return isinstance(data, dict) and data.get(WRITTEN_BY) == writer


def receipt_holds(path: str | os.PathLike, report: str | os.PathLike, writer: str) -> bool:
    """Whether ``report`` (a JSON object ``writer`` wrote) records ``path``'s SHA-256: the file is the one that
    ``writer`` wrote beside its report, unchanged."""
    data = _json(Path(report))
    if not (isinstance(data, dict) and data.get(WRITTEN_BY) == writer and isinstance(data.get(RECEIPT), dict)):
        return False
    recorded = data[RECEIPT].get(Path(path).name)
    return isinstance(recorded, str) and Path(path).is_file() and recorded == file_sha256(path)


def png_text(path: str | os.PathLike) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG file before its image data ({} for anything that is not a PNG)."""
    import struct

    out: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return {}
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return out
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                    return out
                body = f.read(length)
                f.read(4)  # CRC
                if kind == b"tEXt" and b"\0" in body:
                    key, value = body.split(b"\0", 1)
                    out[key.decode("latin-1")] = value.decode("latin-1")
    except OSError:
        return {}


def png_written_by(path: str | os.PathLike, writer: str | None = None) -> bool:
    """Whether ``path`` is a PNG drawn by ``writer`` (any regla command when None): its ``Software`` chunk."""
    software = png_text(path).get(PNG_WRITER_KEY, "")
    return software == writer if writer is not None else software.startswith("regla ")


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return a.exists() and Path(b).exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_new_output(path: str | os.PathLike, ours: Callable[[Path], bool] | None = None, *,
                     inputs: tuple[str | os.PathLike | None, ...] = (), flag: str = "--output",
                     what: str = "an output of this command") -> Path:
    """Before any work: ``path`` may be written. Refuses (exit 2) a path that is one of ``inputs``, a folder, or an
    existing file ``ours`` does not recognise (None: any existing file is refused); checks it is writable."""
    path = Path(path)
    for given in inputs:
        if given is not None and (_same_file(path, given) or path.absolute() == Path(given).absolute()):
            raise UsageError(f"{flag} {path} is an input of this command: refusing to write over it; choose "
                             "another output")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; expected a file or nothing there")
    if (path.exists() or path.is_symlink()) and (ours is None or not ours(path)):
        raise UsageError(f"{flag} {path} exists and is not {what}: refusing to replace it (choose another output, "
                         "or move that file away)")
    return check_writable(path)


def check_output_folder(folder: str | os.PathLike, files: tuple[str, ...], flag: str = "--output") -> Path:
    """Before any work: ``folder`` (which receives ``files``) is a folder or nothing yet, and writable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder}: is a file; expected a folder for {', '.join(files)}")
    check_writable(folder / files[0])
    return folder


def check_report_folder(folder: str | os.PathLike, files: tuple[str, ...], writer: str, *,
                        inputs: tuple[str | os.PathLike | None, ...] = (), flag: str = "--output",
                        report: str = "scores.json") -> Path:
    """Before any work: ``folder`` may receive ``files`` from ``writer`` (:func:`write_report_files`): a folder or
    nothing yet, writable, and each existing file there ``writer``'s own: ``report`` names its writer, the files
    beside it match the SHA-256 recorded in it. Anything else (the user's file, another tool's) is refused."""
    folder = check_output_folder(folder, files, flag)
    for name in files:
        path = folder / name
        if name == report:
            def ours(p: Path) -> bool:
                return json_written_by(p, writer)
        else:
            def ours(p: Path) -> bool:
                return receipt_holds(p, folder / report, writer)
        check_new_output(path, ours, inputs=inputs, flag=flag, what=f"a report of {writer}")
    return folder


def write_report_files(folder: str | os.PathLike, writer: str, report: dict, beside: dict[str, str] | None = None,
                       report_name: str = "scores.json") -> Path:
    """``beside`` (``{name: text}``) then ``report`` as ``report_name`` (naming ``writer`` and the SHA-256 of each
    file beside it), in ``folder``, each atomically; returns the report's path."""
    folder = Path(folder)
    digests = {}
    for name, text in (beside or {}).items():
        atomic_write_text(folder / name, text)
        digests[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    doc = {WRITTEN_BY: writer, **report, **({RECEIPT: digests} if digests else {})}
    return atomic_write_text(folder / report_name, json.dumps(doc, indent=2) + "\n")
