"""Run folders: what a run may write into, and at most one live run per folder.

* **A run writes only into a folder of its own.** A new run's ``--output`` must be new, empty, or a folder that an
  earlier run of the *same command* left without a checkpoint (its lock file says which command); a folder holding
  anything a run does not write (the user's ``config.yaml``, a ``metrics.csv``, notes) is refused, so nothing of
  the user's is replaced. A resume continues in its own folder (other files there are left alone) but only with the
  command that made it.
* **One live run per folder.** The run holds ``fcntl.flock`` on :data:`LOCK` for its whole life (the kernel drops
  the lock when the process dies, so a killed run never blocks the next one); a second run on the folder is refused
  with the first one's process id and command. Under ``torchrun`` only the primary process (``RANK`` 0) checks
  and locks (the others would see its lock).

Standard library only: importing this module imports no torch.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import socket
from pathlib import Path
from typing import IO, Any

from regla.errors import UsageError

__all__ = ["LOCK", "RUN_FILES", "RunLock", "check_run_dir", "foreign_files", "lock_holder", "recorded_command",
           "resume_dir", "resume_path"]

#: The lock file: ``{"command", "pid", "host"}`` of the run that holds (or last held) the folder.
LOCK = ".regla-run.lock"

#: Names a run (harness, task, demo) writes into its folder; anything else there is the user's.
RUN_FILES = frozenset({
    LOCK, "config.yaml", "config.resumed.yaml", "metrics.csv", "metrics.jsonl", "tb", "last.pth", "best.pth",
    "last.safetensors", "best.safetensors", "checkpoint.commit.json", "demo.json", "demo.png",
    "skipped_images.txt", ".complete", "curves.png"})
#: Temporary names of interrupted atomic writes and of checkpoint sets being written (``recover`` clears them).
RUN_PATTERNS = (".*.pending", ".*.tmp")

CHECKPOINTS = ("last.pth", "best.pth")


def foreign_files(run_dir: Path) -> list[str]:
    """Entries of ``run_dir`` that no run writes, sorted."""
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name not in RUN_FILES and not any(fnmatch.fnmatch(p.name, pat) for pat in RUN_PATTERNS))


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def recorded_command(run_dir: Path) -> str | None:
    """The command that made ``run_dir`` (from its lock file), or None for a folder no run has locked."""
    command = _read_lock(run_dir / LOCK).get("command")
    return command if isinstance(command, str) else None


def _describe(info: dict[str, Any]) -> str:
    pid, command, host = info.get("pid", "?"), info.get("command", "a regla run"), info.get("host")
    return f"process {pid}{f' on {host}' if host and host != socket.gethostname() else ''} ({command})"


def lock_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock now (``process PID (command)``), or None when no live process does."""
    import fcntl

    path = run_dir / LOCK
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _describe(_read_lock(path))
    except OSError:
        return None
    return None


def resume_path(resume: str | Path) -> Path:
    """The checkpoint a ``--resume`` names: ``DIR/last.pth`` for a run folder, else the file itself."""
    path = Path(resume).expanduser()
    return path / "last.pth" if path.is_dir() else path


def resume_dir(resume: str | Path) -> Path:
    """The run folder a ``--resume`` names (the folder itself, or the checkpoint's folder)."""
    path = Path(resume).expanduser()
    return path if path.is_dir() else path.parent


def check_run_dir(run_dir: Path, command: str | None, resume: bool) -> None:
    """Refuse a run folder that another live run holds, that holds files no run wrote (a new run), or that another
    command made. ``command`` None skips the last check. Creates nothing."""
    run_dir = Path(run_dir)
    if int(os.environ.get("RANK", "0") or 0) != 0 or not run_dir.is_dir():
        return  # under torchrun the primary process checks (the others would see its lock)
    holder = lock_holder(run_dir)
    if holder is not None:
        raise UsageError(f"{run_dir} is in use by another run: {holder} holds it; wait for that run to end or "
                         "choose another --output")
    entries = list(run_dir.iterdir())
    if not entries:
        return
    made_by = recorded_command(run_dir)
    if not resume:
        foreign = foreign_files(run_dir)
        if made_by is None or foreign:
            shown = foreign or sorted(p.name for p in entries)
            more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
            raise UsageError(f"--output {run_dir} holds files no run wrote there ({', '.join(shown[:3])}{more}); "
                             "a run writes only into a new or empty folder: choose another --output")
    if command is not None and made_by is not None and made_by != command:
        raise UsageError(f"--output {run_dir} is a run folder of {made_by}, not of {command}: choose another "
                         "--output")


class RunLock:
    """``fcntl.flock`` on ``run_dir/LOCK`` for a run's life (``with RunLock(dir, command):``); a second holder is
    refused with a :class:`UsageError` naming the first. The file stays: it records which command made the folder."""

    def __init__(self, run_dir: Path, command: str):
        self.run_dir, self.command = Path(run_dir), command
        self._file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl

        path = self.run_dir / LOCK
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")  # not "w": the holder's record stays readable until we hold the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise UsageError(f"{self.run_dir} is in use by another run: {_describe(_read_lock(path))} holds it; "
                             "wait for that run to end or choose another --output") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"command": self.command, "pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        f.flush()
        self._file = f

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # closing drops the flock
            self._file = None
