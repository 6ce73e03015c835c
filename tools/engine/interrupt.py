"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM: the signal only asks, and the training loop stops at
the next boundary between two steps, where the run's state is whole and can be checkpointed.

A second signal stops a single process at once (``KeyboardInterrupt``), for a run stuck inside a step. Under
torchrun it does not: the launcher forwards the terminal's Ctrl-C to processes that got it already, and ends
them itself if they do not stop in time. DataLoader worker processes forked while :class:`StopOnSignal` is
active inherit its handler, so a terminal's Ctrl-C (sent to the whole process group) does not kill them in the
middle of a batch either.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Dict, Optional

import torch

__all__ = ["TrainingInterrupted", "StopOnSignal"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """A signal stopped the run; the message says what was saved and how to continue.

    ``exit_code`` is the shell's convention for a process ended by the signal (130 for SIGINT, 143 for SIGTERM);
    ``report`` is False on the processes of a distributed run that should not print the message again.
    """

    def __init__(self, message: str, signum: int, *, report: bool = True) -> None:
        super().__init__(message)
        self.signum = signum
        self.report = report

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopOnSignal:
    """Context manager that turns SIGINT and SIGTERM into a stop request, restoring the previous handlers on
    exit. Outside the main thread (where Python cannot install handlers) it does nothing.

    Args:
        second_stops_at_once: a second signal raises ``KeyboardInterrupt`` (else it is ignored).
    """

    def __init__(self, *, second_stops_at_once: bool = True) -> None:
        self.signum: Optional[int] = None
        self.second_stops_at_once = second_stops_at_once
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is None:
            self.signum = signum
        elif self.second_stops_at_once:
            raise KeyboardInterrupt

    def requested(self, *, distributed: bool = False, device: Optional[torch.device] = None) -> Optional[int]:
        """The signal that asked to stop, if any. With ``distributed`` every process calls this at the same
        step and all get the same answer, so they stop together (a signal may reach one process a step
        before another)."""
        if not distributed:
            return self.signum
        flag = torch.tensor([self.signum or 0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None
