"""``edge-lbp export`` (workstation): a model -> an artifact folder, with the export report."""
import importlib.util
import sys

from edge_lbp.cli import options
from edge_lbp.core.defaults import EXPORT_GRADIENTS, GRADIENTS, OPTIMIZERS
from edge_lbp.status import ExitStatus


def add_parser(commands) -> None:
    cmd = commands.add_parser(
        "export", help="model -> artifact folder (ONNX training graphs with LBP-WHT, parameters, manifest)",
        description="Export a model to an artifact folder for on-device training. A .onnx file needs the core "
                    "requirements only; a PyTorch model (preset, factory, hf:PATH) needs the 'export' extra (torch), "
                    "--gradients ort the 'ort' extra (onnxruntime-training).")
    cmd.add_argument("model", metavar="MODEL",
                     help="a .onnx file, a built-in preset (e.g. vit-tiny), package.module:factory, or "
                          "hf:PATH (a Hugging Face checkpoint folder)")
    cmd.add_argument("-o", "--out", required=True, metavar="DIR", help="artifact folder to write")
    options.add_method_options(cmd)
    cmd.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help="(default: %(default)s)")
    cmd.add_argument("--gradients", default=EXPORT_GRADIENTS, choices=GRADIENTS,
                     help="who builds the training, eval and optimizer graphs: own (our builder) or ort "
                          "(onnxruntime-training's, the reference ours is tested against) (default: %(default)s)")
    cmd.add_argument("--lr", type=options.positive, default=1e-3, metavar="X",
                     help="learning rate (default: %(default)s)")
    cmd.add_argument("--input-shape", metavar="C,H,W", help="input image shape (default: the model's own)")
    cmd.add_argument("--num-classes", type=int, metavar="N", help="number of classes (presets, factories, hf:PATH)")
    cmd.add_argument("--grid", metavar="HxW", help="token grid of the rewritten layers (default: inferred)")
    cmd.add_argument("--extra-tokens", type=int, metavar="E", help="tokens before the grid (CLS, distillation)")
    cmd.set_defaults(run=run)


def _say(text: str) -> None:
    """A progress line on stderr, prefixed like the error lines."""
    print(f"edge-lbp: {text}", file=sys.stderr, flush=True)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses the name (the tests' blocker)
        return False


def run(args) -> int:
    needs = {"torch": "export"} if not args.model.endswith(".onnx") else {}
    if args.gradients == "ort":
        needs["onnxruntime"] = "ort"
    missing = [name for name in needs if not _installed(name)]
    if missing:
        extras = ",".join(needs[name] for name in missing)
        raise ValueError(f"export needs {' and '.join(missing)}: install the workstation extra "
                         f"(pip install 'edge-lbp[{extras}]')")
    from edge_lbp.export.exporter import parse_shape
    from edge_lbp.methods import export_model

    # Progress lines only on a terminal: when stderr is captured, an error must be its only line.
    progress = _say if sys.stderr.isatty() else None
    report = export_model(
        args.model, args.out, lbp=args.lbp, train=args.train, optimizer=args.optimizer, lr=args.lr,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        num_classes=args.num_classes, grid=args.grid,
        extra_tokens=args.extra_tokens, block=args.block, method=args.method, taps=args.taps, progress=progress,
        gradients=args.gradients)
    print(report.format())
    return ExitStatus.OK
