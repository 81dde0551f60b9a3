"""``edge-lbp demo``: adapt the bundled pretrained ViT to a new task on this machine, and say what it cost.

With no options everything comes from this package: the CIFAR-10 backbone in ``edge_lbp/assets``, already
exported with LBP (``edge_lbp.core.packaged``), is adapted on the numba engine to a generated 8-class
shapes-and-textures task, with no torch and no ONNX Runtime. Options that need another export (``--lbp``,
``--block``, ``--data`` with another class count) export afresh with the ``export`` extra; ``--artifact`` adapts
an artifact exported elsewhere.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge_lbp.cli import options
from edge_lbp.core import defaults, packaged
from edge_lbp.status import ExitStatus

BACKBONE = packaged.BACKBONE
EPOCHS = 8
BATCH = 32
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


def _artifact(args, work: Path) -> Path:
    """The packaged artifact when it is what the options ask for, else a fresh export (needs the export extra);
    either way one line with the same figures, read from the artifact's manifest."""
    classes = _class_count(Path(args.data)) if args.data else packaged.CLASSES
    started = time.perf_counter()
    if packaged.matches(classes, args.lbp, args.block):
        artifact, how = packaged.assemble(work / "artifact"), "packaged"
    else:
        artifact, how = _export_backbone(work / "artifact", classes, args.lbp, args.block), "exported now"
    manifest = json.loads((artifact / "manifest.json").read_text())
    rewritten = [r for r in manifest["lbp"]["layers"] if r["status"] == "rewritten"]
    ratio = statistics.mean(r["flop_ratio"] for r in rewritten) if rewritten else 1.0
    chosen = "/".join(f"k{k}" for k in sorted({r["block"] for r in rewritten}))
    block = f"{args.block} ({chosen})" if args.block == defaults.AUTO and chosen else args.block
    _say(f"  export: {BACKBONE} with --lbp {args.lbp} --block {block}: {len(rewritten)} linear layers "
         f"rewritten (their backward products {ratio:.2f}x the FLOPs), {_parameter_count(artifact):,} parameters, "
         f"{how}, {time.perf_counter() - started:.1f} s")
    return artifact


def _parameter_count(artifact: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(artifact / "params.safetensors"), "numpy") as tensors:
        return sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())


def _export_backbone(out_dir: Path, classes: int, lbp: str, block: int) -> Path:
    try:
        from edge_lbp.methods import export_model
        from edge_lbp.export.models import load_pretrained
    except ImportError as err:
        raise ValueError(f"the packaged {BACKBONE} artifact was exported for {packaged.describe()}; "
                         f"{classes} classes, --lbp {lbp} --block {block} needs a new export, which needs the "
                         f"export extra (pip install 'edge-lbp[export]'), or pass --artifact DIR exported on a "
                         f"workstation ({err})") from None
    export_model(load_pretrained(BACKBONE, num_classes=classes), out_dir, lbp=lbp, block=block,
                 **{k: v for k, v in packaged.SETTINGS.items() if k not in ("lbp", "block")})
    return out_dir


@contextlib.contextmanager
def _spinner(text: str):
    """A spinner with the seconds elapsed on stderr while the block runs, only when stderr is a terminal (a log
    file gets the lines before and after, not a stream of carriage returns)."""
    if not sys.stderr.isatty():
        yield
        return
    stop, started = threading.Event(), time.perf_counter()

    def spin():
        for frame in itertools.cycle("|/-\\"):
            sys.stderr.write(f"\r{text} {frame} {time.perf_counter() - started:.0f} s")
            sys.stderr.flush()
            if stop.wait(0.25):
                break
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _kernels(artifact: Path, threads) -> None:
    """Compile the Numba kernels before the first measured step, and say so: on a first run this is the longest
    wait of the demo (about a minute on a 2-core x86 VM, longer on a slower board), silent otherwise."""
    from edge_lbp import kernel_cache

    status = kernel_cache.status()
    if status["state"] in ("cold", "stale"):
        _say(f"  kernels: compiling the Numba kernels for this machine ({status['state']} cache; only the first "
             f"run does this) ...")
    started, wall = time.perf_counter(), time.time()
    with _spinner("  compiling the Numba kernels"):
        kernel_cache.warm_up(artifact, threads)
    seconds = time.perf_counter() - started
    # A kernel Numba compiled has its index file rewritten; one loaded from the cache is only read. The second of
    # slack covers the file system's coarser clock.
    compiled = kernel_cache.compiled_since(wall - 1)
    if compiled:
        _say(f"  kernels: compiled {compiled} Numba kernels in {seconds:.0f} s; later runs reuse them from the "
             f"cache in {status['cache_dir']}")
    else:
        _say(f"  kernels: loaded from the Numba cache in {seconds:.1f} s ({status['cache_dir']})")


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


def add_parser(commands) -> None:
    cmd = commands.add_parser(
        "demo", help="export the bundled backbone with LBP and adapt it to a generated task (the main job)",
        description="Adapt the bundled pretrained ViT to a new task on this machine and report accuracy before and "
                    "after, step latency, peak memory and energy. Without options it needs nothing but this package.")
    cmd.add_argument("--data", metavar="PATH", help="adapt to this image folder instead of the generated task")
    cmd.add_argument("--artifact", metavar="DIR", help="adapt this exported artifact (no export extra needed)")
    cmd.add_argument("--epochs", type=options.count, metavar="E", help="training epochs (default: the demo's own)")
    # The bundled backbone trains by backprop with every parameter: of the method options, only these apply.
    options.add_method_options(cmd, ("--lbp", "--block"))
    options.add_threads(cmd)
    options.add_seed(cmd)
    cmd.set_defaults(run=run)


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
        artifact = Path(args.artifact) if args.artifact else _artifact(args, work)
        _kernels(artifact, args.threads)
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
    return ExitStatus.OK
