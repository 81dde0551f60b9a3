"""``edge-lbp demo``: adapt the bundled pretrained ViT to a new task on this machine, and say what it cost.

With no options everything comes from this package: the CIFAR-10 backbone in ``edge_lbp/assets`` is exported with
LBP (needs the ``export`` extra), then adapted on the numba engine to a generated 8-class shapes-and-textures task.
``--data`` adapts to the user's images instead; ``--artifact`` skips the export (on a board without torch).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKBONE = "vit-c10"
EPOCHS = 8
BATCH = 32
LR = 1e-3
# The generated task's size: enough images to adapt well within the demo's 3-minute budget on 2 cores.
TRAIN_PER_CLASS, VAL_PER_CLASS = 200, 50


def _say(text: str) -> None:
    print(text, flush=True)


def _class_count(path: Path) -> int:
    """Classes in an image folder (``path/train`` when present) or an ``.npz``: the head the export needs."""
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if "label_names" in data.files:
                return len(data["label_names"])
            key = next((k for k in ("y_train", "y") if k in data.files), None)
            if key is None:
                raise ValueError(f"{path}: no y_train or y labels")
            return int(data[key].max()) + 1
    folder = path / "train" if (path / "train").is_dir() else path
    if not folder.is_dir():
        raise ValueError(f"{path}: no such image folder or .npz file")
    classes = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(classes) < 2:
        raise ValueError(f"{folder}: needs one sub-folder per class (found {len(classes)})")
    return len(classes)


def _export_backbone(out_dir: Path, classes: int, lbp: str, block: int) -> Path:
    try:
        from edge_lbp.export.exporter import export_model
        from edge_lbp.export.models import load_pretrained
    except ImportError as err:
        raise ValueError(f"the demo exports the bundled backbone, which needs the export extra "
                         f"(pip install 'edge-lbp[export]'); on a board, pass --artifact DIR exported on a "
                         f"workstation ({err})") from None
    started = time.perf_counter()
    report = export_model(load_pretrained(BACKBONE, num_classes=classes), out_dir, lbp=lbp, block=block,
                          train="all", optimizer="adamw", lr=LR)
    rewritten = [r for r in report.layers if r["status"] == "rewritten"]
    ratio = statistics.mean(r["flop_ratio"] for r in rewritten) if rewritten else 1.0
    _say(f"  export: {BACKBONE} with --lbp {lbp} --block {block}: {len(rewritten)} linear layers rewritten "
         f"(their backward products {ratio:.2f}x the FLOPs), {report.total:,} parameters, "
         f"{time.perf_counter() - started:.1f} s")
    return out_dir


def _datasets(args, work: Path, manifest):
    from edge_lbp.data import open_dataset
    from edge_lbp.synthetic import write_task

    source = Path(args.data) if args.data else write_task(work / "task.npz", train_per_class=TRAIN_PER_CLASS,
                                                          val_per_class=VAL_PER_CLASS, seed=args.seed)
    train = open_dataset(source, manifest, split="train")
    val = open_dataset(source, manifest, split="val", classes=train.classes)
    return train, val


def _energy(sampler, steps: int, samples: int) -> str:
    report = sampler.energy()
    if report.joules is None:
        return f"not measured ({report.source}; `edge-lbp doctor` says what to fix)"
    kind = "estimate" if report.estimate else "measured"
    return (f"{report.joules:.1f} J over {report.seconds:.0f} s ({kind}, {report.boundary}): "
            f"{report.joules / steps:.2f} J per step, {1e3 * report.joules / samples:.1f} mJ per sample")


def run(args) -> int:
    from edge_lbp.devices import PowerSampler
    from edge_lbp.memory import PeakMemory
    from edge_lbp.trainer import Trainer

    started = time.perf_counter()
    epochs = args.epochs or EPOCHS
    with tempfile.TemporaryDirectory(prefix="edge_lbp_demo_") as tmp:
        work = Path(tmp)
        task = f"your data in {args.data}" if args.data else "a generated 8-class shapes-and-textures task"
        model = f"the artifact {args.artifact}" if args.artifact else f"the bundled {BACKBONE} (ViT, CIFAR-10)"
        _say(f"edge-lbp demo: adapting {model} to {task}")
        if args.artifact:
            artifact = Path(args.artifact)
        else:
            classes = _class_count(Path(args.data)) if args.data else 8
            artifact = _export_backbone(work / "artifact", classes, args.lbp, args.block)
        trainer = Trainer(artifact, schedule="cosine", warmup_steps=10, threads=args.threads, seed=args.seed)
        train, val = _datasets(args, work, trainer.manifest)
        _say(f"  data: {len(train)} training / {len(val)} validation images, {len(train.classes)} classes"
             + (f" ({', '.join(map(str, train.classes))})" if len(train.classes) <= 10 else ""))
        before = trainer.evaluate(val)
        _say(f"  accuracy before adaptation: {100 * before['accuracy']:.1f}%")
        memory, sampler = PeakMemory(), PowerSampler()
        memory.reset()
        with sampler:
            trainer.fit(train, val, epochs=epochs, batch_size=BATCH, progress=sys.stderr.isatty(),
                        callbacks=[lambda t, r: _say(f"  epoch {r['epoch']}/{epochs}: train loss "
                                                     f"{r['train_loss']:.3f}, val accuracy "
                                                     f"{100 * r['val_accuracy']:.1f}%, {r['seconds']:.1f} s")])
        peak = memory.peak()
        after = trainer.evaluate(val)
        steps = trainer.step_times[1:] or trainer.step_times  # the first step includes one-time compilation
        median = statistics.median(steps)
        _say(f"  accuracy after {epochs} epochs: {100 * after['accuracy']:.1f}% "
             f"(was {100 * before['accuracy']:.1f}%, {len(val)} validation images)")
        _say(f"  step latency: median {1e3 * median:.0f} ms at batch {BATCH} "
             f"({BATCH / median:.0f} samples/s, {len(trainer.step_times)} steps)")
        _say(f"  peak memory while training: {peak / 2**20:.0f} MiB ({memory.method})")
        _say(f"  energy: {_energy(sampler, len(trainer.step_times), len(trainer.step_times) * BATCH)}")
    _say(f"  total {time.perf_counter() - started:.0f} s")
    return 0
