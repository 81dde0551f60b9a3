"""Training-step time on the numba engine of our builder's graphs against ORT's for the same model and settings
(a script, not a test): both artifacts are exported, opened in this process, and stepped alternately on the same
batches; it prints the median step time of each and their ratio (own / ort).

    python tests/benchmarks/bench_gradients.py [--preset vit-tiny] [--lbp lp-tri:4] [--batch 8] [--steps 20]
        [--threads 1]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import edge_lbp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="vit-tiny")
    parser.add_argument("--lbp", default="lp-tri:4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sessions, model = {}, None
        for gradients in ("own", "ort"):
            report = edge_lbp.export_model(args.preset, Path(tmp) / gradients, lbp=args.lbp, optimizer="sgd",
                                           gradients=gradients)
            model = report.manifest["model"]
            sessions[gradients] = edge_lbp.load(Path(tmp) / gradients, "numba", threads=args.threads)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.batch, *model["input_shape"])).astype(np.float32)
        y = rng.integers(0, model["num_classes"], args.batch)
        times = {g: [] for g in sessions}
        for step in range(args.steps + 2):
            for gradients, session in sessions.items():
                start = time.perf_counter()
                session.train_step(x, y)
                if step >= 2:  # the first steps compile and allocate
                    times[gradients].append(time.perf_counter() - start)
    medians = {g: statistics.median(t) for g, t in times.items()}
    for gradients, median in medians.items():
        print(f"{gradients}: {median * 1e3:.1f} ms a step")
    print(f"own / ort: {medians['own'] / medians['ort']:.3f} ({args.preset}, --lbp {args.lbp}, batch {args.batch}, "
          f"{args.threads} thread(s))")


if __name__ == "__main__":
    main()
