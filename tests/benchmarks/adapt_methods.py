"""Adaptation methods side by side: the bundled backbone adapted to an image folder or .npz by each method.

    python tests/benchmarks/adapt_methods.py --data PATH [--val PATH] --methods full lbp lora:8 last:2 bias \\
        [--seeds 0 1 2 3 4] [--epochs 10] [--batch-size 32] [--block auto] [--jobs 1] [--threads T] [--json OUT]

The bundled ``vit-c10`` backbone gets a new head sized to the data's classes (the same head for every method).
A method is one or more parts joined by ``+``; each part says how to export (and, later, how to train):

    full              every parameter, exact backward
    lbp               LBP at the export defaults (selection and block)
    lbp:<selection>   LBP with that selection (lp-tri:4, full, ...); --block applies
    last:<k>          the last k blocks, the final norm and the head; exact backward
    bias              biases, norms and the head; exact backward
    lora:<r>          rank-r LoRA adapters on qkv/proj/fc1/fc2 and the head; the base weights frozen
    lbp+last:<k>      LBP on the last k blocks only (the paper's "last stage" setting); any lbp part + last:<k>
    zo-hybrid:<k>     the last k blocks, final norm and head by backprop, the rest by SPSA (ZOConfig's defaults);
                      lbp+zo-hybrid:<k> with LBP in the backprop part
    side              a query network + head beside the frozen backbone, reading every block (side-tuning)

Any LBP method may end in ``@<block>`` (``lbp:lp-tri:4@4``, ``lbp@auto``) to override ``--block`` for it. Every
method is exported once from the same weights; every (method, seed) run trains in its own process on the numba
engine with the same data order, augmentation and seed (AdamW, cosine schedule with 20 warm-up updates). The
script prints, per method, the final validation accuracy (mean ± sd over seeds), the train-step FLOPs ratio to
full fine-tuning (multiply-accumulates of the linear layers and attention products a step runs, from the
manifest: LBP's rows, which weights are trained and how far back the gradient must go), the median step time
measured side by side (every method's artifact loaded in one process, 5 rounds of 4 steps of each in turn on one
batch, so that the machine's load hits them alike) and the peak RSS of the training process. ``--json`` maps
each method, as written, to ``{"accuracy_mean", "accuracy_sd", "accuracies", "flops_ratio", "step_ms",
"peak_rss_mb"}`` (accuracies as fractions), plus
``"run_step_ms"`` (the median over the training runs, at whatever load they met) and ``"histories"`` (the
per-epoch records of each seed).
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

BACKBONE = "vit-c10"
WARMUP_STEPS = 20
TIMING_ROUNDS, TIMING_STEPS = 5, 4


# --- methods: a part's name (before the first ':') -> its settings: what to export (lbp, method, block) and how to
# train (a TRAINERS name). A new method is a PARTS entry, plus a TRAINERS entry if it trains otherwise. -----------

def _lbp(arg, block):
    from edge_lbp.core import defaults

    return {"lbp": arg or defaults.SELECTION, "block": block}


def _method(spec):
    return lambda arg, block: {"method": spec if arg is None else f"{spec}:{arg}"}


PARTS = {
    "full": lambda arg, block: {},
    "lbp": _lbp,
    "last": _method("last"),
    "bias": _method("bias"),
    "lora": _method("lora"),
    "zo-hybrid": _method("zo-hybrid"),
    "side": _method("side"),
}
BASE = {"lbp": "none", "block": None, "trainer": "fit", "method": "all"}


def fit(trainer, train, val, args):
    """The default training: ``Trainer.fit`` over the epochs; returns the per-epoch history."""
    return trainer.fit(train, val, epochs=args.epochs, batch_size=args.batch_size, progress=False)


TRAINERS = {"fit": fit}


def parse_method(method, block):
    """``"lbp:lp-tri:4@4+last:2"`` -> settings ``{"lbp", "train", "block", "trainer"}``; one line naming a bad
    part."""
    text, at, own_block = method.partition("@")
    if at:
        text, own_block = method.rsplit("@", 1)
        block = own_block
    settings = dict(BASE)
    for part in text.split("+"):
        name, _, arg = part.partition(":")
        if name not in PARTS:
            raise SystemExit(f"method {method!r}: unknown part {part!r}; parts are {', '.join(PARTS)}")
        for key, value in PARTS[name](arg or None, block).items():
            if key != "block" and settings[key] != BASE[key]:
                raise SystemExit(f"method {method!r}: two parts set {key}")
            settings[key] = value
    if at and settings["lbp"] == "none":
        raise SystemExit(f"method {method!r}: @block applies to LBP methods only")
    return settings


def export(method, settings, folder, classes, lr):
    from edge_lbp.core import defaults
    from edge_lbp.methods import export_model
    from edge_lbp.export.models import load_pretrained

    block = settings["block"] if settings["block"] is not None else defaults.EXPORT_BLOCK
    report = export_model(load_pretrained(BACKBONE, num_classes=classes), folder, lbp=settings["lbp"],
                          optimizer="adamw", lr=lr, block=block, method=settings["method"])
    chosen = sorted({r["block"] for r in report.layers if r["status"] == "rewritten"})
    sys.stderr.write(f"exported {method}: method {settings['method']}, lbp {settings['lbp']}"
                     + (f", block {block} -> k{'/'.join(map(str, chosen))}" if chosen else "") + "\n")
    return report.manifest


# --- train-step cost ---------------------------------------------------------------------------------------------

def step_macs(manifest):
    """Multiply-accumulates per sample of one training step of the ViT preset: forward, the input gradients the
    trainable set needs (everything after the first trainable parameter), the weight gradients (LBP: its rows);
    zo-hybrid adds its 2 · probes forward passes. Side-tuning counts the backbone's forward only (its query
    network's products are about 1 % of that)."""
    from edge_lbp.export.models import build_model
    from edge_lbp.methods import of_manifest
    from edge_lbp.methods.lora import Lora

    cfg = build_model(BACKBONE).config
    tokens, patches = (cfg.img_size // cfg.patch_size) ** 2 + 1, (cfg.img_size // cfg.patch_size) ** 2
    dim, hidden, lora = cfg.dim, cfg.dim * cfg.mlp_ratio, method.rank if isinstance(method := of_manifest(manifest), Lora) else 0
    trainable = set(manifest["trainable"])
    rows = {r["layer"]: r["rows"] for r in manifest["lbp"]["layers"] if r["status"] == "rewritten"}
    # Forward order: (parameter prefix, (Ci, Co) of a linear layer or None, token count); "attn" = the products.
    order = [("patch_embed.proj", (cfg.in_chans * cfg.patch_size ** 2, dim), patches), ("tokens", None, 0),
             ("pos_embed", None, 0)]
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        order += [(b + "norm1", None, 0), (b + "attn.qkv", (dim, 3 * dim), tokens), (b + "attn", "attn", tokens),
                  (b + "attn.proj", (dim, dim), tokens), (b + "norm2", None, 0), (b + "mlp.fc1", (dim, hidden), tokens),
                  (b + "mlp.fc2", (hidden, dim), tokens)]
    order += [("norm", None, 0), ("head", (dim, manifest["model"]["num_classes"]), 1)]
    macs, upstream = 0, False  # upstream: a trainable parameter before this point, so the input gradient is needed
    for prefix, shape, n in order:
        if shape == "attn":  # q k^T and attn v; their backward (two products each) once qkv or before trains
            macs += 2 * n * n * dim * (1 + 2 * upstream)
            continue
        own = {p for p in trainable if p == prefix or p.startswith(prefix + ".")}
        if shape is not None:
            ci, co = shape
            macs += n * ci * co * (1 + upstream)  # forward, input gradient
            if prefix + ".weight" in trainable:
                macs += rows.get(prefix + ".weight", n) * ci * co
            if prefix + ".lora_a" in trainable:  # forward x A^T B^T; dB, dh = dy B, dA; the branch's input gradient
                macs += n * lora * ((ci + co) + 2 * co + ci * (1 + upstream))
        upstream = upstream or bool(own)
    if manifest.get("method", {}).get("name") == "zo-hybrid":
        from edge_lbp.core.zo import ZOConfig

        macs += 2 * ZOConfig().probes * step_macs({**manifest, "trainable": [], "method": {}})
    return macs


def flops_ratio(manifest, full):
    return step_macs(manifest) / step_macs(full)


# --- one run (a child process) and the driver ----------------------------------------------------------------------

def peak_rss_mb():
    """This process's peak resident memory (VmHWM; getrusage's ru_maxrss carries the parent's peak on Linux)."""
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmHWM:")).split()[1]) / 1024


def run_one(args):
    """In a child process: adapt the artifact ``args.worker`` with seed ``args.seeds[0]``, print one JSON line."""
    from edge_lbp.data import open_dataset
    from edge_lbp.trainer import Trainer

    trainer = Trainer(args.worker, schedule="cosine", warmup_steps=WARMUP_STEPS, seed=args.seeds[0],
                      threads=args.threads)
    train = open_dataset(args.data, trainer.manifest, split="train")
    val = open_dataset(args.val or args.data, trainer.manifest, split="val", classes=train.classes)
    history = TRAINERS[args.trainer](trainer, train, val, args)
    print(json.dumps(dict(history=history, run_step_ms=1000 * statistics.median(trainer.step_times),
                          peak_rss_mb=peak_rss_mb(), train=len(train), val=len(val))))


def time_steps(args):
    """In a child process: every artifact of ``args.time`` loaded side by side, ``TIMING_ROUNDS`` rounds of
    ``TIMING_STEPS`` steps each in turn, so that a machine's load changes hit every method alike; prints the
    median step time of each, in order, as one JSON list."""
    import numpy as np
    import edge_lbp

    sessions = [edge_lbp.load(folder, "numba", threads=args.threads) for folder in args.time]
    shape = sessions[0].artifact.manifest["inputs"][0]["shape"][1:]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, *shape)).astype(np.float32)
    y = rng.integers(0, sessions[0].artifact.manifest["outputs"][0]["shape"][-1], args.batch_size)
    times = [[] for _ in sessions]
    for session in sessions:
        session.train_step(x, y)  # warm-up: kernels loaded or compiled, buffers allocated
    for _ in range(TIMING_ROUNDS):
        for session, mine in zip(sessions, times):
            for _ in range(TIMING_STEPS):
                started = time.perf_counter()
                session.train_step(x, y)
                mine.append(time.perf_counter() - started)
    print(json.dumps([1000 * statistics.median(t) for t in times]))


def launch(args, method, folder, trainer, seed, threads):
    cmd = [sys.executable, __file__, "--worker", str(folder), "--seeds", str(seed), "--threads", str(threads),
           "--data", args.data, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--trainer", trainer]
    cmd += ["--val", args.val] if args.val else []
    sys.stderr.write(f"adapting with {method}, seed {seed} ...\n")  # one write: runs overlap
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{method} seed {seed} failed:\n{out.stderr[-3000:]}")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    sys.stderr.write(f"done {method} seed {seed}: accuracy {run['history'][-1]['val_accuracy']:.4f}, step "
                     f"{run['run_step_ms']:.0f} ms, peak RSS {run['peak_rss_mb']:.0f} MB\n")  # a record if stopped early
    return run


def class_count(args):
    from edge_lbp.data import open_dataset

    from edge_lbp.export.models import build_model

    # The backbone's input is all open_dataset needs to know to read the labels.
    cfg = build_model(BACKBONE).config
    shape = ["batch", cfg.in_chans, cfg.img_size, cfg.img_size]
    manifest = {"inputs": [{"name": "input", "shape": shape, "dtype": "float32"}],
                "outputs": [{"name": "logits", "shape": ["batch", "classes"], "dtype": "float32"}],
                "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    return len(open_dataset(args.data, manifest, split="train").classes)


def measure_step_times(args, methods, folders, threads):
    cmd = [sys.executable, __file__, "--time", *[str(folders[m]) for m in methods], "--threads", str(threads),
           "--batch-size", str(args.batch_size), "--data", args.data]
    sys.stderr.write(f"timing {len(methods)} methods side by side ...\n")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"timing failed:\n{out.stderr[-3000:]}")
    return dict(zip(methods, json.loads(out.stdout.strip().splitlines()[-1])))


def summarise(methods, runs, flops, step_ms):
    results = {}
    for method in methods:
        mine = [r for m, r in runs if m == method]
        accuracies = [r["history"][-1]["val_accuracy"] for r in mine]
        results[method] = dict(
            accuracy_mean=statistics.mean(accuracies),
            accuracy_sd=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            accuracies=accuracies, flops_ratio=flops[method],
            step_ms=step_ms[method],
            run_step_ms=statistics.median(r["run_step_ms"] for r in mine),
            peak_rss_mb=max(r["peak_rss_mb"] for r in mine),
            histories=[r["history"] for r in mine])
    return results


def report(args, results, sample):
    print(f"\n{BACKBONE} -> {args.data} ({sample['train']} train / {sample['val']} val), {args.epochs} epochs, AdamW "
          f"lr {args.lr}, cosine ({WARMUP_STEPS} warm-up updates), batch {args.batch_size}, seeds "
          f"{' '.join(map(str, args.seeds))}, {args.jobs} run(s) side by side")
    width = max(len(m) for m in results)
    print(f"{'method':<{width}}  {'accuracy %':>14}  {'per seed':<{6 * len(args.seeds)}}{'FLOPs':>7}"
          f"{'step ms':>9}{'peak RSS MB':>13}")
    for method, r in results.items():
        seeds = " ".join(f"{100 * a:5.1f}" for a in r["accuracies"])
        print(f"{method:<{width}}  {100 * r['accuracy_mean']:6.1f} ± {100 * r['accuracy_sd']:4.1f}  "
              f"{seeds:<{6 * len(args.seeds)}}{r['flops_ratio']:7.2f}{r['step_ms']:9.0f}{r['peak_rss_mb']:13.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image folder (PATH/train used when present) or .npz")
    parser.add_argument("--val", help="validation folder or .npz (default: --data's val split)")
    parser.add_argument("--methods", nargs="+", default=["full", "lbp"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--block", default=None, help="WHT block of the LBP methods: K or auto (default: the export's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (cores are split between them)")
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba + BLAS threads per run (default: the cores split between the jobs; 1 on a machine "
                             "others share: parallel kernels wait at every barrier for a descheduled thread)")
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--time", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", default="fit", choices=TRAINERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_one(args)
    if args.time:
        return time_steps(args)
    methods = list(dict.fromkeys(args.methods))
    settings = {m: parse_method(m, args.block) for m in methods}  # every method checked before the first export
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    with tempfile.TemporaryDirectory(prefix="adapt_methods_") as tmp:
        classes = class_count(args)
        folders = {m: Path(tmp) / f"m{i}" for i, m in enumerate(methods)}
        manifests = {m: export(m, settings[m], folders[m], classes, args.lr) for m in methods}
        full = manifests.get("full") or export("full", parse_method("full", None), Path(tmp) / "full", classes,
                                               args.lr)
        flops = {m: flops_ratio(manifests[m], full) for m in methods}
        step_ms = measure_step_times(args, methods, folders, threads)
        todo = [(m, seed) for seed in args.seeds for m in methods]
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(zip([m for m, _ in todo],
                            pool.map(lambda job: launch(args, job[0], folders[job[0]], settings[job[0]]["trainer"],
                                                         job[1], threads), todo)))
    results = summarise(methods, runs, flops, step_ms)
    report(args, results, runs[0][1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
