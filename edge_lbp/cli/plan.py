"""``edge-lbp plan``: which training methods fit a memory budget at a batch size (``edge_lbp.plan``)."""
from edge_lbp.cli import options
from edge_lbp.status import ExitStatus


def add_parser(commands) -> None:
    cmd = commands.add_parser("plan", help="peak memory of each training method at a batch size; which fit a budget",
                              description="Estimate the peak memory of inference, this artifact's method, "
                                          "zo-hybrid:K and side-tuning at a batch size, and say which fit.")
    cmd.add_argument("artifact", metavar="ARTIFACT")
    cmd.add_argument("--memory", required=True, metavar="SIZE", help="the budget: 512MB, 512MiB, 1.5GB, ...")
    options.add_batch_size(cmd)
    cmd.add_argument("--zo-blocks", type=options.count, default=2, metavar="K",
                     help="the K of the zo-hybrid:K estimate (default: %(default)s)")
    options.add_threads(cmd)
    cmd.set_defaults(run=run)


def run(args) -> int:
    from edge_lbp.plan import format_plan, parse_size, plan

    budget = parse_size(args.memory)
    baseline, rows = plan(args.artifact, args.batch_size, threads=args.threads, zo_blocks=args.zo_blocks)
    print(format_plan(args.artifact, args.batch_size, budget, baseline, rows))
    return ExitStatus.OK
