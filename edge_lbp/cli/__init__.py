"""The ``edge-lbp`` command line: the parser here, one module per command (``demo``, ``export``, ``train`` with
``eval``, ``profile``, ``doctor``, ``fleet``, ``ops``, ``plan``), each with a ``run(args)``.

A command's module is imported only when that command runs, so ``edge-lbp --help`` stays fast and the device
path never imports torch or onnxruntime. Every error reaches the user as one ``edge-lbp: error:`` line.
"""
import argparse
import contextlib
import math
import os
import sys
import warnings

from edge_lbp.core import defaults
from edge_lbp._version import __version__
from edge_lbp.runtime import AUTO, ENGINES


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
    _add_demo(commands)
    _add_export(commands)
    _add_train(commands)
    _add_eval(commands)
    _add_profile(commands)
    _add_doctor(commands)
    _add_fleet(commands)
    _add_ops(commands)
    _add_plan(commands)
    return parser


def _lazy(command: str, function: str = "run"):
    """A run function that imports the command's module only when the command runs."""

    def run(args):
        import importlib

        return getattr(importlib.import_module(f"edge_lbp.cli.{command}"), function)(args)

    return run


def _number(kind, smallest, strict):
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


_count, _count0, _positive = _number(int, 1, False), _number(int, 0, False), _number(float, 0, True)


def _block(text: str):
    """``auto`` or a block side (checked as a power of two by the exporter, which says so in one line)."""
    return defaults.AUTO if text.strip().lower() == defaults.AUTO else _count(text)


def _add_data_options(cmd, required: bool) -> None:
    cmd.add_argument("--data", required=required, metavar="PATH",
                     help="an image folder (one sub-folder per class) or an .npz file (x_train/y_train, ...)")
    cmd.add_argument("--batch-size", type=_count, default=32, metavar="B", help="(default: %(default)s)")
    cmd.add_argument("--engine", default=AUTO, choices=(AUTO, *ENGINES),
                     help="auto: numba (the device engine) (default: %(default)s)")
    cmd.add_argument("--threads", type=_count, metavar="T", help="Numba + BLAS threads, fixed (default: up to all cores, tuned per step)")


def _add_demo(commands) -> None:
    cmd = commands.add_parser(
        "demo", help="export the bundled backbone with LBP and adapt it to a generated task (the main job)",
        description="Adapt the bundled pretrained ViT to a new task on this machine and report accuracy before and "
                    "after, step latency, peak memory and energy. Without options it needs nothing but this package.")
    cmd.add_argument("--data", metavar="PATH", help="adapt to this image folder instead of the generated task")
    cmd.add_argument("--artifact", metavar="DIR", help="adapt this exported artifact (no export extra needed)")
    cmd.add_argument("--epochs", type=_count, metavar="E", help="training epochs (default: the demo's own)")
    cmd.add_argument("--lbp", default=defaults.SELECTION, metavar="SPEC", help="LBP selection (default: %(default)s)")
    cmd.add_argument("--block", type=_block, default=defaults.EXPORT_BLOCK, metavar="K",
                     help="WHT block side or auto, for the bundled backbone's 8x8 token grid (default: %(default)s)")
    cmd.add_argument("--threads", type=_count, metavar="T",
                     help="Numba + BLAS threads, fixed (default: up to all cores, tuned per step)")
    cmd.add_argument("--seed", type=_count0, default=0)
    cmd.set_defaults(run=_lazy("demo"))


def _add_train(commands) -> None:
    cmd = commands.add_parser("train", help="adapt an artifact to an image folder or .npz, with checkpoints",
                              description="Train an exported artifact on your data; resumable.")
    cmd.add_argument("artifact", metavar="ARTIFACT", help="artifact folder made by `edge-lbp export`")
    _add_data_options(cmd, required=True)
    cmd.add_argument("--val", metavar="PATH", help="validation data (default: none)")
    cmd.add_argument("--epochs", type=_count, default=10, metavar="E", help="(default: %(default)s)")
    cmd.add_argument("--lr", type=_positive, metavar="X", help="peak learning rate (default: the artifact's)")
    cmd.add_argument("--schedule", default="cosine", choices=("constant", "cosine"), help="(default: %(default)s)")
    cmd.add_argument("--warmup-steps", type=_count0, default=0, metavar="N", help="linear warm-up (default: 0)")
    cmd.add_argument("--accumulate", type=_count, default=1, metavar="K", help="batches per update (default: 1)")
    cmd.add_argument("--clip-norm", type=_positive, metavar="X", help="clip the gradient norm to X (numba engine)")
    cmd.add_argument("--no-augment", action="store_true", help="no random crops and flips of the training images")
    cmd.add_argument("--checkpoint", metavar="DIR",
                     help="save a checkpoint here after every epoch and on Ctrl-C (at the next update)")
    cmd.add_argument("--resume", action="store_true",
                     help="continue from the checkpoint in --checkpoint (its hyper-parameters, data position)")
    cmd.add_argument("--export-onnx", metavar="PATH", help="write the adapted model as an inference ONNX file")
    cmd.add_argument("--max-rejected", type=_count, default=10, metavar="N",
                     help="stop after N steps in a row with a non-finite loss or gradient (default: %(default)s)")
    cmd.add_argument("--seed", type=_count0, default=0)
    zo = cmd.add_argument_group("zo-hybrid artifacts (defaults: edge_lbp.core.zo.ZOConfig)")
    zo.add_argument("--zo-eps", type=_positive, metavar="X", help="SPSA perturbation scale (default: 1e-3)")
    zo.add_argument("--zo-probes", type=_count, metavar="N", help="SPSA probes per step (default: 1)")
    zo.add_argument("--zo-lr", type=_number(float, 0, False), metavar="X",
                    help="peak learning rate of the ZO part, plain SGD, same schedule (default: 1e-4)")
    cmd.set_defaults(run=_lazy("train", "train"))


def _add_eval(commands) -> None:
    cmd = commands.add_parser("eval", help="loss and accuracy of an artifact (or a checkpoint) on data")
    cmd.add_argument("artifact", metavar="ARTIFACT")
    _add_data_options(cmd, required=True)
    cmd.add_argument("--checkpoint", metavar="DIR", help="evaluate the parameters saved here")
    cmd.add_argument("--split", default="val", metavar="NAME",
                     help="folder: PATH/NAME if it exists; .npz: x_NAME/y_NAME, x_test for val, else x/y "
                          "(default: %(default)s)")
    cmd.set_defaults(run=_lazy("train", "evaluate"))


def _add_profile(commands) -> None:
    cmd = commands.add_parser("profile", help="time, memory and energy of training steps, per phase and op",
                              description="Profile training steps of an artifact: latency per step, phase and "
                                          "op type; peak memory; power and energy from the board's sensors.")
    cmd.add_argument("artifact", metavar="ARTIFACT")
    cmd.add_argument("--steps", type=_count, default=10, metavar="N", help="measured steps (default: %(default)s)")
    cmd.add_argument("--warmup", type=_count0, default=3, metavar="W", help="unmeasured steps (default: %(default)s)")
    _add_data_options(cmd, required=False)
    cmd.add_argument("--rate", type=_positive, default=10.0, metavar="HZ", help="sensor sampling (default: 10 Hz)")
    cmd.add_argument("--out", default="profile", metavar="DIR", help="report folder (default: %(default)s)")
    cmd.set_defaults(run=_lazy("profile"))


def _add_doctor(commands) -> None:
    cmd = commands.add_parser("doctor", help="what this machine offers: board, cores, sensors, Numba, engines")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.set_defaults(run=_lazy("doctor"))


def _add_ops(commands) -> None:
    cmd = commands.add_parser("ops", help="the ONNX ops the device engine runs (from its kernel registry)")
    cmd.set_defaults(run=_lazy("ops"))


def _add_plan(commands) -> None:
    cmd = commands.add_parser("plan", help="peak memory of each training method at a batch size; which fit a budget",
                              description="Estimate the peak memory of inference, this artifact's method, "
                                          "zo-hybrid:K and side-tuning at a batch size, and say which fit.")
    cmd.add_argument("artifact", metavar="ARTIFACT")
    cmd.add_argument("--memory", required=True, metavar="SIZE", help="the budget: 512MB, 512MiB, 1.5GB, ...")
    cmd.add_argument("--batch-size", type=_count, default=32, metavar="B", help="(default: %(default)s)")
    cmd.add_argument("--zo-blocks", type=_count, default=2, metavar="K",
                     help="the K of the zo-hybrid:K estimate (default: %(default)s)")
    cmd.add_argument("--threads", type=_count, metavar="T", help="Numba + BLAS threads (default: all cores)")
    cmd.set_defaults(run=_lazy("plan"))


def _add_export(commands) -> None:
    cmd = commands.add_parser(
        "export", help="model -> artifact folder (ONNX training graphs with LBP-WHT, parameters, manifest)",
        description="Export a model to an artifact folder for on-device training (workstation only: needs the "
                    "'export' extra).")
    cmd.add_argument("model", metavar="MODEL",
                     help="a .onnx file, a built-in preset (e.g. vit-tiny), package.module:factory, or "
                          "hf:PATH (a Hugging Face checkpoint folder)")
    cmd.add_argument("-o", "--out", required=True, metavar="DIR", help="artifact folder to write")
    cmd.add_argument("--lbp", default=defaults.SELECTION, metavar="SPEC",
                     help="the backward of what backprops: none | full | lp-tri:<o> | energy:<r>, then optional "
                          "',<weight pattern>=<spec>' overrides "
                          "(default: %(default)s)")
    cmd.add_argument("--train", metavar="SPEC", help="deprecated: use --method (all | last:K | bias | head | lora:R)")
    cmd.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    cmd.add_argument("--lr", type=_positive, default=1e-3, metavar="X", help="learning rate (default: %(default)s)")
    cmd.add_argument("--input-shape", metavar="C,H,W", help="input image shape (default: the model's own)")
    cmd.add_argument("--num-classes", type=int, metavar="N", help="number of classes (presets, factories, hf:PATH)")
    cmd.add_argument("--grid", metavar="HxW", help="token grid of the rewritten layers (default: inferred)")
    cmd.add_argument("--extra-tokens", type=int, metavar="E", help="tokens before the grid (CLS, distillation)")
    cmd.add_argument("--block", type=_block, default=defaults.EXPORT_BLOCK, metavar="K",
                     help=f"WHT block side, or auto: per layer the largest block up to {defaults.BLOCK} that leaves "
                          f"{defaults.MIN_BLOCKS} blocks per image (default: %(default)s)")
    cmd.add_argument("--method", default="all", metavar="M",
                     help="what trains: all | last:K (the last K blocks, final norm, head) | bias | head | lora:R "
                          "(rank-R adapters + head) | zo-hybrid:K (SPSA for all but the last K blocks, which "
                          "backprop) | side (a query network + head beside the frozen backbone) "
                          "(default: %(default)s)")
    cmd.add_argument("--taps", metavar="I,J,...", help="--method side: the blocks it reads (default: all)")
    cmd.set_defaults(run=_lazy("export"))


def _add_fleet(commands) -> None:
    fleet = commands.add_parser(
        "fleet", help="federated adaptation across boards with Flower (needs the 'fleet' extra)",
        description="Several boards adapt one model together without sharing images: Flower's FedAvg over the "
                    "artifact's trainable parameters, each board training with the Trainer on its own data.")
    sub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    cmd = sub.add_parser("local", help="a SuperLink and N SuperNodes on this machine (127.0.0.1), one run",
                         description="A real Flower deployment on the loopback interface: each SuperNode trains on "
                                     "its own part of --data; prints the global validation accuracy every round.")
    cmd.add_argument("artifact", metavar="ARTIFACT")
    cmd.add_argument("--data", required=True, metavar="PATH",
                     help="image folder or .npz; its train split is divided among the SuperNodes, its val split "
                          "is the global validation set (and each node's part of it, its local one)")
    cmd.add_argument("--clients", type=int, default=3, metavar="N", help="SuperNodes (default: %(default)s)")
    cmd.add_argument("--rounds", type=int, default=3, metavar="R", help="(default: %(default)s)")
    cmd.add_argument("--partition", default="iid", choices=("iid", "class"),
                     help="iid: a seeded random deal; class: node i gets the classes l with l %% N == i "
                          "(default: %(default)s)")
    cmd.add_argument("--threads", type=int, default=1, metavar="T",
                     help="threads per SuperNode (default: %(default)s: the nodes share this machine's cores)")
    cmd.add_argument("--out", default="fleet-out", metavar="DIR",
                     help="round-<r>/ (checkpoint + model.onnx), rounds.jsonl, logs/ (default: %(default)s)")
    cmd.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="stop the whole run after S seconds")
    _add_round_options(cmd)
    cmd.set_defaults(run=_lazy("fleet", "local"))

    cmd = sub.add_parser("superlink", help="start Flower's SuperLink (the server; the ServerApp runs beside it)")
    cmd.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    cmd.add_argument("--port", type=int, default=9093, help="(default: %(default)s)")
    cmd.add_argument("--ssl-certfile", metavar="PEM")
    cmd.add_argument("--ssl-keyfile", metavar="PEM")
    cmd.add_argument("--insecure", action="store_true", help="no TLS (a trusted network only)")
    cmd.set_defaults(run=_lazy("fleet", "superlink"))

    cmd = sub.add_parser("supernode", help="start Flower's SuperNode on this board, training on its own data")
    cmd.add_argument("--superlink", required=True, metavar="HOST:PORT")
    cmd.add_argument("--artifact", required=True, metavar="DIR", help="the artifact folder on this board")
    cmd.add_argument("--data", required=True, metavar="PATH", help="this board's image folder or .npz")
    cmd.add_argument("--val", metavar="PATH", help="local validation data (default: the val split of --data)")
    cmd.add_argument("--threads", type=int, metavar="T", help="Numba + BLAS threads, fixed (default: up to all cores, tuned per step)")
    cmd.add_argument("--port", type=int, default=9094, metavar="P",
                     help="the SuperNode's own API on 127.0.0.1 (default: %(default)s; one per SuperNode)")
    cmd.add_argument("--root-certificates", metavar="PEM", help="the SuperLink's CA certificate")
    cmd.add_argument("--insecure", action="store_true", help="no TLS (a trusted network only)")
    cmd.set_defaults(run=_lazy("fleet", "supernode"))

    cmd = sub.add_parser("run", help="start a federated run on a SuperLink (flwr run with this project's app)")
    cmd.add_argument("artifact", metavar="ARTIFACT", help="the artifact folder, as a path on the SuperLink machine")
    cmd.add_argument("--superlink", required=True, metavar="HOST:PORT")
    cmd.add_argument("--val", metavar="PATH", help="global validation data, a path on the SuperLink machine")
    cmd.add_argument("--rounds", type=int, default=3, metavar="R", help="(default: %(default)s)")
    cmd.add_argument("--min-nodes", type=int, default=2, metavar="N",
                     help="boards connected before a round starts (default: %(default)s)")
    cmd.add_argument("--out", default="fleet-out", metavar="DIR",
                     help="the global models, a path on the SuperLink machine (default: %(default)s)")
    cmd.add_argument("--root-certificates", metavar="PEM", help="the SuperLink's CA certificate")
    cmd.add_argument("--insecure", action="store_true", help="no TLS (a trusted network only)")
    _add_round_options(cmd)
    cmd.set_defaults(run=_lazy("fleet", "run"))

    cmd = sub.add_parser("app", help="print the folder of the Flower App (for flwr run)")
    cmd.set_defaults(run=_lazy("fleet", "app"))


def _add_round_options(cmd) -> None:
    cmd.add_argument("--epochs", type=int, default=1, metavar="E", help="local epochs per round (default: 1)")
    cmd.add_argument("--batch-size", type=int, default=32, metavar="B", help="(default: %(default)s)")
    cmd.add_argument("--lr", type=float, metavar="X", help="peak learning rate (default: the artifact's)")
    cmd.add_argument("--seed", type=int, default=0, help="round r trains with seed + r - 1 (default: 0)")


def say(text: str) -> None:
    """A progress or note line on stderr, prefixed like the error lines."""
    print(f"edge-lbp: {text}", file=sys.stderr, flush=True)


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
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _warnings_as_lines():
            return args.run(args)
    except KeyboardInterrupt:
        print("edge-lbp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error is one line; --debug shows where it came from
        if args.debug or os.environ.get("EDGE_LBP_DEBUG"):
            raise
        print(f"edge-lbp: error: {_describe(exc)}", file=sys.stderr)
        return 2


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return f"out of memory: {_one_line(exc) or 'try a smaller --batch-size'}"
    # Input errors (ValueError, OSError) speak for themselves; anything else also names its type.
    plain = isinstance(exc, (ValueError, OSError, RuntimeError))
    return _one_line(exc) if plain else f"{type(exc).__name__}: {_one_line(exc)}"


if __name__ == "__main__":
    sys.exit(main())
