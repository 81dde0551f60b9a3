"""``edge-lbp longtail``: a long-tailed copy of a training set, for experiments (``edge_lbp.longtail``)."""
from edge_lbp.cli import options
from edge_lbp.status import ExitStatus


def add_parser(commands) -> None:
    cmd = commands.add_parser("longtail", help="write a long-tailed copy of an image folder or .npz file",
                              description="Keep n_max * R^(-c/(C-1)) training images of class c (class 0 the "
                                          "head, the last class the tail; R the imbalance ratio), chosen at "
                                          "random; other splits are copied whole.")
    cmd.add_argument("source", metavar="SOURCE", help="an image folder (train/<class>/ or <class>/) or an .npz file")
    cmd.add_argument("out", metavar="OUT", help="a new folder, or a new .npz file for an .npz source")
    cmd.add_argument("--imbalance", type=options.number(float, 1, False), required=True, metavar="R",
                     help="images of the largest class over those of the smallest, e.g. 10 or 100")
    options.add_seed(cmd, help="which images are kept (default: %(default)s)")
    cmd.set_defaults(run=run)


def run(args) -> int:
    from edge_lbp.longtail import make_longtail, shot_groups

    counts = make_longtail(args.source, args.out, args.imbalance, seed=args.seed)
    groups = shot_groups(counts)
    print(f"wrote {args.out}: {sum(counts)} training images, {max(counts)} to {min(counts)} per class "
          f"(ratio {max(counts) / min(counts):.1f})")
    print("per class: " + "  ".join(map(str, counts)))
    print("shots: " + "  ".join(f"{g} {groups.count(g)}" for g in ("many", "medium", "few")))
    return ExitStatus.OK
