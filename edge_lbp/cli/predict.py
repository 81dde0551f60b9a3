"""``edge-lbp predict``: classify images on the device with a checkpoint or an artifact (``edge_lbp.predict``)."""
import json

from edge_lbp.cli import options
from edge_lbp.status import ExitStatus


def add_parser(commands) -> None:
    cmd = commands.add_parser(
        "predict", help="classify images with a checkpoint or an artifact: the top classes by name",
        description="Classify image files or folders with the adapted model (a checkpoint of `edge-lbp train` or "
                    "a fleet round, or an artifact as exported): each image's most probable classes, named as the "
                    "training data named them, with their probabilities.")
    cmd.add_argument("model", metavar="MODEL", help="a checkpoint folder (train --checkpoint, a fleet round-<r>/) "
                                                    "or an artifact folder")
    cmd.add_argument("images", nargs="+", metavar="IMAGE",
                     help="image files, or folders (every image file under them, sub-folders too)")
    cmd.add_argument("--artifact", metavar="DIR", help="a checkpoint's artifact (default: the one it was saved from)")
    cmd.add_argument("--top", type=options.count, default=3, metavar="K",
                     help="the K most probable classes per image (default: %(default)s)")
    cmd.add_argument("--json", action="store_true",
                     help='print a JSON list: {"image", "top": [{"class", "probability"}, ...]} per image')
    options.add_batch_size(cmd)
    options.add_engine(cmd)
    options.add_threads(cmd)
    cmd.set_defaults(run=predict)


def predict(args) -> int:
    from edge_lbp.predict import Predictor

    predictor = Predictor.open(args.model, artifact=args.artifact, engine=args.engine, threads=args.threads)
    results = predictor.predict(args.images, top_k=args.top, batch_size=args.batch_size, progress=True)
    if args.json:
        print(json.dumps([r.record() for r in results], indent=1))
    else:
        print(table(results))
    return ExitStatus.OK


def table(results) -> str:
    """One line per image: its path, then ``name probability`` per rank, in aligned columns."""
    rows = [["image", *(f"top-{k + 1}" for k in range(len(results[0].top)))]]
    rows += [[r.image, *(f"{name} {p:.3f}" for name, p in r.top)] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
