"""The ``edge-lbp`` command line: the program's parser and its error handling here, one module per command
(``demo``, ``export``, ``train`` with ``eval``, ``predict``, ``profile``, ``doctor``, ``fleet``, ``ops``,
``plan``, ``longtail``), each declaring its parser (``add_parser``) beside its handlers; the options several
commands share are in ``options``.

Command modules import only the standard library, numpy and the light core at their top, their handlers the rest,
so ``edge-lbp --help`` stays fast and the device path never imports torch or onnxruntime. Every error reaches the
user as one ``edge-lbp: error:`` line, and every command ends with a status of ``edge_lbp.status.ExitStatus``;
SIGTERM stops a command as Ctrl-C does.
"""
import argparse
import contextlib
import os
import sys
import warnings

from edge_lbp._version import __version__
from edge_lbp.cli import demo, doctor, export, fleet, longtail, ops, plan, predict, profile, train
from edge_lbp.status import ExitStatus, raise_stopped, signal_name, status_of, stop_signals

COMMANDS = (demo, export, train, predict, profile, doctor, fleet, ops, plan, longtail)  # in the order --help lists them


class _UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """A usage mistake is one error line too (argparse would print the usage and exit)."""
        raise _UsageError(f"{self.prog.split()[-1]}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge-lbp",
        description="Fine-tune vision transformers on the device with low-rank (Walsh-Hadamard) backpropagation.",
    )
    parser.add_argument("--version", action="version", version=f"edge-lbp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def _warnings_as_lines():
    """Warnings (skipped files, a missing sensor) as one ``edge-lbp: warning:`` line each, not Python's format."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest, **kw: print(f"edge-lbp: warning: {message}", file=sys.stderr)
        yield


def main(argv=None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: EDGE_LBP_DEBUG=1)")
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"edge-lbp: error: {exc}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    if args.command is None:
        parser.print_help()
        return ExitStatus.OK
    try:
        with stop_signals(raise_stopped), _warnings_as_lines():
            return args.run(args)
    except KeyboardInterrupt as exc:
        print(f"edge-lbp: stopped by {signal_name(exc)}", file=sys.stderr)
        return status_of(exc)
    except Exception as exc:  # every error is one line; --debug shows where it came from
        if args.debug or os.environ.get("EDGE_LBP_DEBUG"):
            raise
        print(f"edge-lbp: error: {_describe(exc)}", file=sys.stderr)
        return status_of(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return f"out of memory: {_one_line(exc) or 'try a smaller --batch-size'}"
    # Input errors (ValueError, OSError) speak for themselves; anything else also names its type.
    plain = isinstance(exc, (ValueError, OSError, RuntimeError))
    return _one_line(exc) if plain else f"{type(exc).__name__}: {_one_line(exc)}"


if __name__ == "__main__":
    sys.exit(main())
