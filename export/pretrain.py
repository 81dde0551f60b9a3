"""Pretrain the bundled backbone (preset ``vit-c10``) on CIFAR-10 (workstation side, needs the ``export`` extra).

    python -m edge_lbp.export.pretrain --data ../shared/data/cifar10_20k.npz \\
        --out edge_lbp/assets/vit_c10.safetensors --epochs 35 --seed 0

Writes the float32 weights (safetensors) and a JSON sidecar with the same stem (config, seed, epochs, wall time,
CIFAR-10 test accuracy, command line, SHA-256 of the data file). The run is seeded: model init, data order and
augmentation come from ``--seed``, with two torch threads (the thread count changes float summation order).
"""

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_lbp.export.exporter import DEFAULT_MEAN_STD
from edge_lbp.export.models import PRESETS, build_model
from edge_lbp.core.files import sha256

THREADS = 2
PAD = 4  # random-crop padding in pixels
# Per-epoch progress is measured on every 5th test image only (the test set is sorted by class, so a stride keeps
# it balanced): a full 10,000-image pass every epoch would cost about one epoch of training over the run. The final
# accuracy is always on the full test set.
PROGRESS_STRIDE = 5
EVAL_BATCH = 500
# Chosen for this 1.2 M-parameter ViT and a run of 10-20 epochs (short runs want a high peak rate and little
# regularisation beyond crops, flips and label smoothing).
HYPER = {"batch": 128, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1, "label_smoothing": 0.1}
NO_DECAY = ("tokens", "pos_embed")


def load_cifar(path):
    """``(x_train, y_train, x_test, y_test)``: images uint8 NCHW tensors, labels int64 tensors."""
    with np.load(path, allow_pickle=False) as data:
        arrays = [data[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    x_train, y_train, x_test, y_test = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    return x_train.permute(0, 3, 1, 2), y_train.long(), x_test.permute(0, 3, 1, 2), y_test.long()


def normalize(images):
    """uint8 images -> float32 in the exporter's convention: [0, 1], then (x - mean) / std."""
    mean, std = DEFAULT_MEAN_STD
    return (images.float() / 255.0 - mean) / std


def augment(padded, index, rng):
    """Random 32x32 crops of the zero-padded images ``padded[index]`` and random horizontal flips."""
    n, side = len(index), padded.shape[-1] - 2 * PAD
    oy, ox = rng.integers(0, 2 * PAD + 1, size=(2, n))
    rows = torch.from_numpy(oy[:, None] + np.arange(side))  # n, side
    cols = torch.from_numpy(ox[:, None] + np.arange(side))
    batch = padded[torch.from_numpy(index)]  # n, C, side + 2 PAD, side + 2 PAD
    batch = batch[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # n, side, side, C
    batch = batch.permute(0, 3, 1, 2)
    flip = torch.from_numpy(rng.random(n) < 0.5)[:, None, None, None]
    return torch.where(flip, batch.flip(-1), batch)


def param_groups(model, weight_decay):
    """Weight decay on matrices and conv kernels only: not on biases, norms, the CLS token or position embeddings."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and name not in NO_DECAY else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_factor(step, warmup, total):
    """Linear warm-up to 1 over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def accuracy(model, images, labels, bf16=False):
    model.eval()
    correct = 0
    for i in range(0, len(images), EVAL_BATCH):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(normalize(images[i:i + EVAL_BATCH]))
        correct += (logits.argmax(1) == labels[i:i + EVAL_BATCH]).sum().item()
    model.train()
    return correct / len(images)


def train(model, data, *, epochs, seed, batch, lr, weight_decay, warmup_epochs, label_smoothing, bf16=True,
          log=print):
    """Train ``model`` in place on ``data`` (``load_cifar``'s tuple); returns the per-epoch history.

    ``bf16`` runs forward and backward under bfloat16 autocast (weights, gradients and AdamW state stay float32):
    about twice as fast on CPUs with AMX/AVX-512 bf16, which is what makes this fit the time budget."""
    x_train, y_train, x_test, y_test = data
    padded = nn.functional.pad(x_train, (PAD,) * 4)  # zero pixels: black borders, as in the usual CIFAR recipe
    rng = np.random.default_rng(seed)
    steps_per_epoch = len(x_train) // batch  # the last partial batch is dropped: every step sees `batch` images
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history, start = [], time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            index = order[step * batch:(step + 1) * batch]
            x = normalize(augment(padded, index, rng))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(x), y_train[torch.from_numpy(index)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            loss_sum += loss.item()
        acc = accuracy(model, x_test[::PROGRESS_STRIDE], y_test[::PROGRESS_STRIDE], bf16)
        row = {"epoch": epoch + 1, "train_loss": round(loss_sum / steps_per_epoch, 4),
               f"test_1_in_{PROGRESS_STRIDE}_acc": round(acc, 4), "seconds": round(time.perf_counter() - start, 1)}
        history.append(row)
        log(json.dumps(row))
    return history


def _write_atomic(path, write):
    """``write(tmp)`` then rename over ``path``: a crash never leaves a half-written file under the real name."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.chmod(tmp, 0o644)  # safetensors creates its file owner-only; the weights ship in the wheel, readable by all
    os.replace(tmp, path)


def save(model, out, record):
    """The float32 state dict to ``out`` (safetensors) and ``record`` to the JSON sidecar next to it."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    _write_atomic(out, lambda tmp: save_file(tensors, str(tmp), metadata={"preset": record["preset"]}))
    text = json.dumps(record, indent=2) + "\n"
    _write_atomic(out.with_suffix(".json"), lambda tmp: tmp.write_text(text))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m edge_lbp.export.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("--out", required=True, help="weights file (.safetensors); the sidecar gets .json")
    parser.add_argument("--preset", default="vit-c10", choices=sorted(PRESETS))
    parser.add_argument("--epochs", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp32", action="store_true", help="train in float32 instead of bfloat16 autocast")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    data = load_cifar(args.data)
    model = build_model(args.preset)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {params:,} parameters; {len(data[0])} train / {len(data[2])} test images", flush=True)
    hyper = {**HYPER, "bf16": not args.fp32}
    history = train(model, data, epochs=args.epochs, seed=args.seed, log=lambda s: print(s, flush=True), **hyper)
    # The final number is in float32, as the shipped weights run on the device.
    test_acc = accuracy(model, data[2], data[3])
    wall = time.perf_counter() - start
    print(f"CIFAR-10 test accuracy {test_acc:.4f} ({len(data[2])} images); total {wall / 60:.1f} min", flush=True)
    record = {
        "preset": args.preset, "config": dataclasses.asdict(model.config), "parameters": params,
        "seed": args.seed, "epochs": args.epochs, "hyperparameters": hyper, "threads": THREADS,
        "wall_time_s": round(wall, 1), "cifar10_test_accuracy": round(test_acc, 4), "test_images": len(data[2]),
        "normalization": {"input_range": [0.0, 1.0], "mean": DEFAULT_MEAN_STD[0], "std": DEFAULT_MEAN_STD[1]},
        "history": history, "command": shlex.join(["python", "-m", "edge_lbp.export.pretrain", *argv]),
        "data_file": Path(args.data).name, "data_sha256": sha256(args.data), "torch": torch.__version__,
    }
    save(model, args.out, record)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}", flush=True)


if __name__ == "__main__":
    main()
