"""``edge-lbp plan``: which training methods fit a memory budget at a batch size (``edge_lbp.plan``)."""
from edge_lbp.plan import format_plan, parse_size, plan


def run(args) -> int:
    budget = parse_size(args.memory)
    baseline, rows = plan(args.artifact, args.batch_size, threads=args.threads, zo_blocks=args.zo_blocks)
    print(format_plan(args.artifact, args.batch_size, budget, baseline, rows))
    return 0
