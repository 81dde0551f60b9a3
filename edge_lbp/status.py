"""How a run ends: the exit status of every ``edge-lbp`` command (one table; docs/device.md shows it) and the stop
signals, Ctrl-C's SIGINT and a service manager's SIGTERM, which every long-running command handles alike.

Standard library only: the command line and the device-side Trainer both import it.
"""
from __future__ import annotations

import contextlib
import enum
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ExitStatus(enum.IntEnum):
    """What the status of an ``edge-lbp`` command says happened (the docs' table is checked against this one)."""

    OK = 0  # success
    ERROR = 1  # any other error (a bug, a failed Flower process, a full disk): one line, no traceback
    BAD_INPUT = 2  # bad input: a usage mistake, a missing or malformed file, a number out of range, a batch too large
    DIVERGED = 3  # diverged: --max-rejected rejected steps in a row, or the run ended on a rejected step
    INTERRUPTED = 128 + signal.SIGINT  # stopped by Ctrl-C (130): resumable
    TERMINATED = 128 + signal.SIGTERM  # stopped by SIGTERM (143), a service manager's stop: resumable


class Stopped(KeyboardInterrupt):
    """A stop signal ended the run; ``signum`` says which (a plain ``KeyboardInterrupt`` is Ctrl-C's)."""

    def __init__(self, signum=signal.SIGINT, message: str = ""):
        super().__init__(message)
        self.signum = signal.Signals(signum)


# Input errors: what the user can fix by giving other input. Anything else is ERROR unless the exception names its
# own status in an ``exit_status`` attribute (DivergenceError, FleetError).
_BAD_INPUT = (ValueError, MemoryError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
              NotADirectoryError)


def status_of(exc: BaseException) -> ExitStatus:
    """The exit status of a run that ended with ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus(128 + getattr(exc, "signum", signal.SIGINT))
    own = getattr(exc, "exit_status", None)
    if own is not None:
        return ExitStatus(own)
    return ExitStatus.BAD_INPUT if isinstance(exc, _BAD_INPUT) else ExitStatus.ERROR


def signal_name(exc: BaseException) -> str:
    """``Ctrl-C`` or ``SIGTERM``: what stopped a run that ended with ``exc`` (a ``KeyboardInterrupt``)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextlib.contextmanager
def stop_signals(handler):
    """``handler(signum, frame)`` for every stop signal while the block runs (the main thread only: elsewhere
    Python cannot install handlers, and the block runs unchanged); the previous handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def raise_stopped(signum, frame) -> None:
    """The command line's handler: a stop signal interrupts as Ctrl-C does (Python's default for SIGTERM would end
    the process at once, with no ``finally`` run: children left behind, nothing saved)."""
    raise Stopped(signum)
