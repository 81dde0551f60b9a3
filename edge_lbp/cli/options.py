"""Options more than one command takes, defined once: the number parsers, the data options, ``--engine``,
``--threads``, ``--seed``, ``--onnx-preprocessing`` and the options that choose how an export trains
(``add_method_options``).

The values an option accepts come from the module that owns them (schedules, optimizers, engines, the LBP
defaults), so a help text cannot fall behind its code. This module imports nothing heavy: building the parser
must not load torch, onnxruntime, numba or onnx.
"""
import argparse
import math

from edge_lbp import methods
from edge_lbp.core import defaults
from edge_lbp.methods import lbp
from edge_lbp.runtime import AUTO, ENGINES

THREADS_HELP = "Numba + BLAS threads, fixed (default: up to all cores, tuned per step)"


def number(kind, smallest, strict):
    """An argparse type: ``kind`` (int or float) above ``smallest`` (``strict``) or at least it; floats finite."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not (value > smallest if strict else value >= smallest) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {smallest:g}"
                                             + (" and finite" if kind is float else ""))
        return value

    return parse


count, count0, positive, non_negative = (number(int, 1, False), number(int, 0, False), number(float, 0, True),
                                         number(float, 0, False))


def block(text: str):
    """``auto`` or a block side (checked as a power of two by the exporter, which says so in one line)."""
    return defaults.AUTO if text.strip().lower() == defaults.AUTO else count(text)


def add_threads(cmd) -> None:
    cmd.add_argument("--threads", type=count, metavar="T", help=THREADS_HELP)


def add_batch_size(cmd) -> None:
    cmd.add_argument("--batch-size", type=count, default=32, metavar="B", help="(default: %(default)s)")


def add_seed(cmd, help="(default: %(default)s)") -> None:
    cmd.add_argument("--seed", type=count0, default=0, help=help)


def add_data_options(cmd, required: bool) -> None:
    """What a command that runs an artifact on data takes: the data, the batch, the engine, the threads."""
    cmd.add_argument("--data", required=required, metavar="PATH",
                     help="an image folder (one sub-folder per class) or an .npz file (x_train/y_train, ...)")
    add_batch_size(cmd)
    add_engine(cmd)
    add_threads(cmd)


def add_engine(cmd) -> None:
    cmd.add_argument("--engine", default=AUTO, choices=(AUTO, *ENGINES),
                     help=f"{AUTO}: numba (the device engine) (default: %(default)s)")


def add_onnx_preprocessing(cmd, what: str = "--export-onnx") -> None:
    """Whether an inference model written by ``cmd`` (``what``) scales and normalises its input in its graph."""
    cmd.add_argument("--onnx-preprocessing", action="store_true",
                     help=f"{what} takes uint8 NHWC images at the model's input size (as a camera gives them, "
                          "resized) and scales and normalises them in its graph (default: float32 NCHW, "
                          "normalised outside)")


# How an export trains: the LBP selection of the backward, the method (and its deprecated --train), the side taps
# and the WHT block. One table, so that the method vocabulary changes in one place for every command using it.
_METHOD_OPTIONS = {
    "--lbp": dict(default=lbp.DEFAULT, metavar="SPEC",
                  help=f"the backward of whatever backprops: {lbp.SYNTAX} (energy: the r bases of highest measured "
                       "gradient energy), then optional ',<weight pattern>=<spec>' overrides (default: %(default)s)"),
    "--method": dict(default=methods.DEFAULT, metavar="M",
                     help=f"what trains and how: {methods.SYNTAX}; last:K: the last K blocks, final norm and head; "
                          "lora:R: rank-R adapters and the head; zo-hybrid:K: SPSA for all but the last K blocks, "
                          "which backprop; side: a query network and head beside the frozen backbone "
                          "(default: %(default)s)"),
    "--train": dict(metavar="SPEC", help="deprecated: use --method"),
    "--block": dict(type=block, default=defaults.EXPORT_BLOCK, metavar="K",
                    help=f"WHT block side, or auto: per layer the largest block up to {defaults.BLOCK} that leaves "
                         f"{defaults.MIN_BLOCKS} blocks per image (default: %(default)s)"),
    "--taps": dict(metavar="I,J,...", help="--method side: the blocks it reads (default: all)"),
}


def add_method_options(cmd, names=tuple(_METHOD_OPTIONS)) -> None:
    """Add the method options ``names`` (default: all of them, in the table's order) to ``cmd``."""
    for name in names:
        cmd.add_argument(name, **_METHOD_OPTIONS[name])
