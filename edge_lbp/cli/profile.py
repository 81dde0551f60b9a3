"""``edge-lbp profile``: profile an artifact's training steps on random inputs (or ``--data``) and write the report,
the Chrome trace and the figure."""
import sys
import warnings
import edge_lbp
from edge_lbp.data import endless_batches, random_batches
from edge_lbp.core.files import check_writable
from edge_lbp.profile_report import summary
from edge_lbp.profiler import profile


def run(args) -> int:
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
    return 0
