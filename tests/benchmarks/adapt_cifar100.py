"""Adaptation accuracy: the bundled CIFAR-10 backbone fine-tuned on ../shared/data/cifar100_10cls (10 new classes).

Each configuration is exported from the same pretrained weights and trained for the same epochs with the same
seed, schedule and data order on the numba engine; each LBP selection is tried with every ``--block`` given. Every
(configuration, seed) runs in its own process; the script prints validation accuracy per epoch for each seed,
then the final accuracies, their means and each configuration's gap to the first one. ``--json`` saves every
history.

    python tests/benchmarks/adapt_cifar100.py [--epochs 10] [--lbp none lp-tri:4] [--block 8 4] [--seeds 0 1 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar100_10cls"


def run_one(args, folder):
    """In a child process: export with ``args.worker`` and ``args.block[0]``, adapt, print the history as JSON."""
    from edge_lbp.trainer import Trainer  # first: edge_lbp's thread settings before torch starts OpenMP
    from edge_lbp.data import open_dataset
    from edge_lbp.export.exporter import export_model
    from edge_lbp.export.models import load_pretrained

    export_model(load_pretrained("vit-c10", num_classes=10), folder, lbp=args.worker, train="all",
                 optimizer="adamw", lr=args.lr, block=args.block[0])
    trainer = Trainer(folder, schedule="cosine", warmup_steps=20, seed=args.seeds[0], threads=args.threads)
    train = open_dataset(args.data, trainer.manifest, split="train")
    val = open_dataset(args.data, trainer.manifest, split="val", classes=train.classes)
    start = time.perf_counter()
    history = trainer.fit(train, val, epochs=args.epochs, batch_size=args.batch, progress=False)
    label = args.worker if args.worker == "none" else f"{args.worker} k{args.block[0]}"
    print(json.dumps(dict(lbp=label, seed=args.seeds[0], history=history, train=len(train), val=len(val),
                          seconds=time.perf_counter() - start)))


def configurations(args):
    """(selection, block) pairs: exact fine-tuning once, every LBP selection with every block."""
    return [(lbp, block) for lbp in args.lbp for block in ([args.block[0]] if lbp == "none" else args.block)]


def launch(args, lbp, block, seed, threads):
    cmd = [sys.executable, __file__, "--worker", lbp, "--block", str(block), "--seeds", str(seed),
           "--threads", str(threads), "--data", args.data, "--epochs", str(args.epochs), "--lr", str(args.lr),
           "--batch", str(args.batch)]
    sys.stderr.write(f"adapting with --lbp {lbp} --block {block}, seed {seed} ...\n")  # one write: runs overlap
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"--lbp {lbp} --block {block} seed {seed} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(args, runs):
    sample = runs[0]
    print(f"\nvit-c10 -> cifar100_10cls ({sample['train']} train / {sample['val']} val), {args.epochs} epochs, "
          f"AdamW lr {args.lr}, cosine, batch {args.batch}")
    for seed in args.seeds:
        rows = [r for r in runs if r["seed"] == seed]
        print(f"\nseed {seed}\nepoch " + "".join(f"{r['lbp']:>14}" for r in rows) + "   (validation accuracy %)")
        for epoch in range(args.epochs):
            print(f"{epoch + 1:>5} " + "".join(f"{100 * r['history'][epoch]['val_accuracy']:>14.1f}" for r in rows))
        print("time  " + "".join(f"{r['seconds']:>13.0f}s" for r in rows))

    final = {}
    for r in runs:
        final.setdefault(r["lbp"], []).append(100 * r["history"][-1]["val_accuracy"])
    first, base = next(iter(final.items()))
    print(f"\nfinal validation accuracy %   seeds {' '.join(map(str, args.seeds))}")
    for lbp, acc in final.items():
        gaps = [a - b for a, b in zip(acc, base)]
        spread = f" ± {statistics.stdev(gaps):.1f}" if len(gaps) > 1 else ""
        gap = "" if lbp == first else f"   gap {statistics.mean(gaps):+.1f}{spread} (per seed " + \
            " ".join(f"{g:+.1f}" for g in gaps) + ")"
        print(f"{lbp:>14}  " + " ".join(f"{a:5.1f}" for a in acc) + f"   mean {statistics.mean(acc):5.1f}{gap}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--lbp", nargs="+", default=["none", "lp-tri:4"])
    parser.add_argument("--block", type=int, nargs="+", default=[8], help="WHT block sides to try (default 8)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (threads are split between them)")
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            return run_one(args, Path(tmp) / "a")

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    todo = [(lbp, block, seed) for seed in args.seeds for lbp, block in configurations(args)]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: launch(args, *job, threads), todo))
    report(args, runs)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(config=vars(args), results=runs), indent=1))


if __name__ == "__main__":
    main()
