"""``edge-lbp profile``: profile an artifact's training steps on random inputs (or ``--data``) and write the report,
the Chrome trace and the figure."""
import sys
import warnings

from edge_lbp.cli import options
from edge_lbp.status import ExitStatus


def add_parser(commands) -> None:
    cmd = commands.add_parser("profile", help="time, memory and energy of training steps, per phase and op",
                              description="Profile training steps of an artifact: latency per step, phase and "
                                          "op type; peak memory; power and energy from the board's sensors.")
    cmd.add_argument("artifact", metavar="ARTIFACT")
    cmd.add_argument("--steps", type=options.count, default=10, metavar="N",
                     help="measured steps (default: %(default)s)")
    cmd.add_argument("--warmup", type=options.count0, default=3, metavar="W",
                     help="unmeasured steps (default: %(default)s)")
    options.add_data_options(cmd, required=False)
    cmd.add_argument("--rate", type=options.positive, default=10.0, metavar="HZ",
                     help="sensor sampling (default: 10 Hz)")
    cmd.add_argument("--out", default="profile", metavar="DIR", help="report folder (default: %(default)s)")
    cmd.set_defaults(run=run)


def run(args) -> int:
    import edge_lbp
    from edge_lbp.core.files import check_writable
    from edge_lbp.data import endless_batches, random_batches
    from edge_lbp.profile_report import summary
    from edge_lbp.profiler import profile

    check_writable(args.out, folder=True)  # before the steps, not after them
    session = edge_lbp.load(args.artifact, args.engine, threads=args.threads)
    manifest = session.artifact.manifest
    batches = (endless_batches(args.data, manifest, args.batch_size) if args.data
               else random_batches(manifest, args.batch_size))
    # Sensor fall-backs arrive as warnings; on the command line they are one-line notes, not tracebacks.
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        prof = profile(session, batches, steps=args.steps, warmup=args.warmup, rate_hz=args.rate)
    for note in dict.fromkeys(str(n.message) for n in notes):
        print(f"edge-lbp: note: {note}", file=sys.stderr)
    paths = prof.write(args.out)
    print(summary(prof.report(), warmup=args.warmup, data=args.data))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return ExitStatus.OK
