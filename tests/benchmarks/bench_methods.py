"""Training methods side by side on the bundled backbone: peak RSS, step time and (with data) accuracy.

full (exact backprop), lbp (LBP-WHT), zo-hybrid:K (SPSA + backprop of the last K blocks), side (side-tuning) and
inference (the full artifact's eval step on the same batches: the floor), each exported once from the pretrained
``vit-c10`` with a new 10-class head, then trained in a fresh process per
(method, seed) with the device requirements only (no torch in the measured process). Runs alternate: each seed
goes through the methods in another order. A run trains ``--epochs`` on ``--data`` (or ``--steps`` random batches
without data), after ``--warmup`` steps that compile or load the kernels; its peak RSS is the high-water mark over
the warm-up, training and evaluation (VmHWM reset through /proc/self/clear_refs once the artifact is loaded), so it
includes the process's baseline (Python, numpy, Numba, onnx, the graphs and parameters): the ``loaded`` column is
the RSS just before the first step, and ``added`` the peak above it.

    python tests/benchmarks/bench_methods.py --methods full lbp zo-hybrid:2 side --steps 30       # memory, time
    python tests/benchmarks/bench_methods.py --data ../shared/data/cifar100_10cls --epochs 10 --seeds 0 1 2
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar100_10cls"


def export(method, folder, args):
    """The method's artifact: AdamW at ``--lr``; LBP-WHT lp-tri:4 where the method backpropagates, except full."""
    from edge_lbp.methods import export_model
    from edge_lbp.export.models import load_pretrained

    lbp = "none" if method in ("full", "side", "inference") else args.lbp
    export_model(load_pretrained("vit-c10", num_classes=10), folder, lbp=lbp, block=args.block, lr=args.lr,
                 method=method if method.startswith("zo") or method == "side" else "backprop")


def worker(args):
    """One run in this process; prints one JSON line."""
    import numpy as np
    import psutil

    from edge_lbp.memory import PeakMemory
    from edge_lbp.trainer import Trainer

    options = {"lr": args.zo_lr} if args.zo_lr is not None and args.worker.startswith("zo") else None
    trainer = Trainer(args.artifact, threads=args.threads, seed=args.seeds[0], schedule="cosine", warmup_steps=20,
                      method_options=options)
    memory = PeakMemory()
    memory.reset()
    loaded = psutil.Process().memory_info().rss
    rng = np.random.default_rng(args.seeds[0])
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)  # written: its pages are resident
    y = rng.integers(0, 10, args.batch)
    inference = args.worker == "inference"
    for _ in range(args.warmup):  # kernels compiled or loaded; no update: training starts fresh
        if inference:
            trainer.session.eval_step(x)
        else:
            trainer.session.forward_backward(x, y)
    trainer.session.eval_step(x[:1])
    result = {"method": args.worker, "seed": args.seeds[0], "loaded_mib": loaded / 2**20}
    if inference:
        for _ in range(args.steps):
            start = time.perf_counter()
            trainer.session.eval_step(x)
            trainer.step_times.append(time.perf_counter() - start)
    elif args.data:
        from edge_lbp.data import open_dataset

        train = open_dataset(args.data, trainer.manifest, split="train")
        val = open_dataset(args.data, trainer.manifest, split="val", classes=train.classes)
        history = trainer.fit(train, val, epochs=args.epochs, batch_size=args.batch, progress=False)
        result.update(accuracy=[r["val_accuracy"] for r in history], seconds=sum(r["seconds"] for r in history))
    else:
        trainer.total_steps = args.steps
        for _ in range(args.steps):
            trainer.step(x, y)
    result.update(peak_mib=memory.peak() / 2**20, step_ms=1e3 * statistics.median(trainer.step_times),
                  memory_method=memory.method)
    if not inference:
        result["estimate_mib"] = trainer.session.step_bytes(args.batch) / 2**20
    print(json.dumps(result))


def launch(args, method, folder, seed):
    cmd = [sys.executable, __file__, "--worker", method, "--artifact", str(folder), "--seeds", str(seed),
           "--threads", str(args.threads), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--epochs", str(args.epochs)]
    cmd += ["--data", args.data] if args.data else []
    cmd += ["--zo-lr", str(args.zo_lr)] if args.zo_lr is not None else []
    sys.stderr.write(f"{method}, seed {seed} ...\n")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{method} seed {seed} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(args, runs):
    print(f"\nvit-c10 (10-class head), batch {args.batch}, {args.threads} thread(s), "
          + (f"{args.epochs} epochs on {args.data}" if args.data else f"{args.steps} steps on random data")
          + f", seeds {' '.join(map(str, args.seeds))}")
    by = {m: [r for r in runs if r["method"] == m] for m in args.methods}
    base = by[args.methods[0]]
    def median(rows, key):
        return statistics.median(r[key] for r in rows) if all(key in r for r in rows) else float("nan")

    print(f"{'method':>12} {'peak RSS':>10} {'loaded':>8} {'added':>8} {'step est.':>10} {'median step':>12} "
          f"{'peak ÷ ' + args.methods[0]:>12} {'added ÷':>8} {'step ÷':>8}"
          + ("   final val accuracy % per seed (mean)" if args.data else ""))
    base_peak, base_step = median(base, "peak_mib"), median(base, "step_ms")
    base_added = base_peak - median(base, "loaded_mib")
    for method, rows in by.items():
        peak, loaded, step = median(rows, "peak_mib"), median(rows, "loaded_mib"), median(rows, "step_ms")
        line = (f"{method:>12} {peak:>6.0f} MiB {loaded:>4.0f} MiB {peak - loaded:>4.0f} MiB "
                f"{median(rows, 'estimate_mib'):>6.1f} MiB {step:>9.0f} ms {peak / base_peak:>12.2f} "
                f"{(peak - loaded) / base_added:>8.2f} {step / base_step:>8.2f}")
        if args.data and method != "inference":
            accs = [100 * r["accuracy"][-1] for r in rows]
            line += "   " + " ".join(f"{a:5.1f}" for a in accs) + f"  ({statistics.mean(accs):.1f})"
        print(line)
    if args.data:
        print("\nvalidation accuracy % per epoch (mean over seeds)")
        for method, rows in ((m, r) for m, r in by.items() if m != "inference"):
            curve = [statistics.mean(100 * r["accuracy"][e] for r in rows) for e in range(args.epochs)]
            print(f"{method:>12} " + " ".join(f"{a:5.1f}" for a in curve))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["full", "lbp", "zo-hybrid:2", "side", "inference"])
    parser.add_argument("--data", help=f"image folder or .npz (e.g. {DATA}); without it, random batches")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30, help="steps without --data")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lbp", default="lp-tri:4")
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--zo-lr", type=float, help="the ZO part's learning rate (default: ZOConfig's)")
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {m: Path(tmp) / m.replace(":", "") for m in args.methods}
        for method, folder in folders.items():
            sys.stderr.write(f"exporting {method} ...\n")
            export(method, folder, args)
        runs = []
        for i, seed in enumerate(args.seeds):
            order = args.methods[i % len(args.methods):] + args.methods[:i % len(args.methods)]
            runs += [launch(args, m, folders[m], seed) for m in (order if i % 2 == 0 else order[::-1])]
    report(args, runs)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(config=vars(args), runs=runs), indent=1))


if __name__ == "__main__":
    main()
