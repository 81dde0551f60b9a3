"""Profiler overhead: training-step time with the profiler on versus plain ``train_step``, in one process.

The machine may be shared, so the modes are compared step by step in rounds, the order reversed every round
(drift and "who goes first" cancel):

- interleaved: inside one ``Profiler`` block, rounds of ``off`` (plain ``session.train_step``), ``trace`` (the
  engine's per-node trace alone) and ``on`` (``prof.step``: trace, boundary marks, memory high-water resets).
  Wall time and process CPU time (all threads; on a busy machine the steadier measure of the work added). The
  sampler thread runs for every mode, so its cost is measured on its own: one sample's time times the rate.
- blocks: whole ``with Profiler`` blocks (sampler thread included) against plain blocks, ABBA; noisier.

Prints medians and ratios; never asserts a time. Usage:

    python tests/benchmarks/bench_profiler_overhead.py [ARTIFACT] [--engine numba] [--batch 32] [--rounds 150]
        [--blocks 6] [--steps 5] [--warmup 3]

Without ARTIFACT, vit-tiny is exported to a temporary folder (needs the export extra).
"""
import argparse
import statistics
import tempfile
import time
import warnings

import edge_lbp.runtime as runtime
import edge_lbp
from edge_lbp.data import random_batches
from edge_lbp.profiler import Profiler


def both_clocks(run, x, y):
    wall, cpu = time.perf_counter(), time.process_time()
    run(x, y)
    return time.perf_counter() - wall, time.process_time() - cpu


def ratio_lines(label, runs):
    """Per clock: each mode's median and the median of its per-round ratio to ``off`` (same round)."""
    for index, clock in enumerate(("wall", "CPU")):
        off = [t[index] for t in runs["off"]]
        parts = []
        for mode, times in runs.items():
            values = [t[index] for t in times]
            part = f"{mode} {statistics.median(values) * 1e3:.2f} ms"
            if mode != "off":
                part += (f" (x{statistics.median(values) / statistics.median(off):.3f}, per round "
                         f"x{statistics.median(v / o for v, o in zip(values, off)):.3f})")
            parts.append(part)
        print(f"{label}, {clock} time, median of {len(off)}: " + "; ".join(parts))


def interleaved(session, x, y, rounds):
    runs = {"off": [], "trace": [], "on": []}
    with Profiler(session) as prof:
        modes = {"off": session.train_step, "trace": lambda a, b: session.train_step(a, b, trace=[]),
                 "on": prof.step}
        for round_ in range(rounds):
            for mode in list(modes) if round_ % 2 == 0 else list(modes)[::-1]:
                runs[mode].append(both_clocks(modes[mode], x, y))
        sample_s = [both_clocks(lambda *_: prof.sampler.sample(), None, None)[0] for _ in range(50)]
    ratio_lines("interleaved", runs)
    per_sample = statistics.median(sample_s)
    print(f"sampler thread: {per_sample * 1e6:.0f} us per sample at {1 / prof.sampler.period:g} Hz = "
          f"{per_sample / prof.sampler.period * 100:.3f} % of one core")
    start = time.perf_counter()
    prof.report()
    print(f"report() after {rounds} steps (not in step time): {(time.perf_counter() - start) * 1e3:.1f} ms")


def blocks(session, x, y, count, steps):
    runs = {"off": [], "on": []}
    for block in range(count):
        for mode in ("off", "on") if block % 2 == 0 else ("on", "off"):
            if mode == "off":
                runs["off"] += [both_clocks(session.train_step, x, y) for _ in range(steps)]
            else:
                with Profiler(session) as prof:
                    runs["on"] += [both_clocks(prof.step, x, y) for _ in range(steps)]
    ratio_lines(f"blocks of {steps} steps (sampler included)", runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", nargs="?")
    parser.add_argument("--engine", default="numba", choices=runtime.ENGINES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=150, help="interleaved rounds (one step per mode)")
    parser.add_argument("--blocks", type=int, default=6, help="off/on block pairs")
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    folder = args.artifact
    if folder is None:
        from edge_lbp.methods import export_model

        folder = tempfile.mkdtemp(prefix="bench-profiler-")
        export_model("vit-tiny", folder)
    session = edge_lbp.load(folder, args.engine)
    x, y = next(random_batches(session.artifact.manifest, args.batch))
    for _ in range(args.warmup):
        session.train_step(x, y)
    warnings.simplefilter("ignore")  # the sensor fall-back notice, once per process, is not the subject here
    print(f"{args.engine} engine, {folder}, batch {args.batch}")
    interleaved(session, x, y, args.rounds)
    blocks(session, x, y, args.blocks, args.steps)


if __name__ == "__main__":
    main()
