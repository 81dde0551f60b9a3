"""``edge-lbp export`` (workstation): a model -> an artifact folder, with the export report."""
import importlib.util
import sys

from edge_lbp.cli import say


def run(args) -> int:
    missing = [name for name in ("torch", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"export needs {' and '.join(missing)}: install the workstation extra "
                         "(pip install 'edge-lbp[export]')")
    from edge_lbp.export.exporter import parse_shape
    from edge_lbp.methods import export_model

    # Progress lines only on a terminal: when stderr is captured, an error must be its only line.
    progress = say if sys.stderr.isatty() else None
    report = export_model(
        args.model, args.out, lbp=args.lbp, train=args.train, optimizer=args.optimizer, lr=args.lr,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        num_classes=args.num_classes, grid=args.grid,
        extra_tokens=args.extra_tokens, block=args.block, method=args.method, taps=args.taps, progress=progress)
    print(report.format())
    return 0
