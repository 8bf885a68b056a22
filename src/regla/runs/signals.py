"""Clean stops: SIGINT and SIGTERM finish the current step, save a resumable checkpoint and exit 130 / 143.

A cluster preempts a job with SIGTERM; a person stops one with Ctrl-C (SIGINT). The first signal only sets a flag
that the training loop reads after each optimizer update; a second SIGINT stops at once (``KeyboardInterrupt``).
Under ``torchrun`` the flag is all-reduced at every check, so every rank stops after the same step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from regla.errors import EXIT_SIGINT, EXIT_SIGTERM, Stopped

_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class StopSignals:
    """Context manager that turns SIGINT/SIGTERM into a stop request for the duration of a run."""

    def __init__(self, dist_info: Any = None, command: str = "regla train"):
        self.dist_info = dist_info
        self.command = command
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in _NAMES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker: the main process decides
            return
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        if _is_primary(self.dist_info):
            print(f"\n{_NAMES[signum]}: finishing the current step and saving a resumable checkpoint "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def requested(self, dist_info: Any = None) -> bool:
        """Whether any rank received a stop signal (a collective call under DDP: every rank must call it)."""
        d = dist_info or self.dist_info
        local = self.signum is not None
        if d is None or not getattr(d, "distributed", False):
            return local
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], device=d.device, dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())

    def stopped(self, run_dir: Path, epoch: int, step: int) -> Stopped:
        """The error that ends the run, naming where it stopped and the one command that resumes it."""
        name = _NAMES.get(self.signum or signal.SIGINT, "a signal")
        where = f"epoch {epoch + 1}, after batch {step}" if step else f"the start of epoch {epoch + 1}"
        code = EXIT_SIGTERM if self.signum == signal.SIGTERM else EXIT_SIGINT
        return Stopped(f"stopped by {name} at {where}; checkpoint saved. Resume with: "
                       f"{self.command} --resume {run_dir}", exit_code=code)


def _is_primary(dist_info: Any) -> bool:
    return dist_info is None or getattr(dist_info, "rank", 0) == 0
