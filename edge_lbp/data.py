"""Training data on the device: image folders and ``.npz`` arrays, decoded once, batched as the artifact expects.

``open_dataset(path, manifest, split="train")`` decodes every image (Pillow) to the model's input size and keeps
them as uint8 ``(N, H, W, C)`` in memory: N·H·W·C bytes (1,188 CIFAR images at 32 px: 3.6 MB; 1,000 at 224 px:
150 MB). Decoding once keeps epochs fast on a small board, and finds unreadable files before training starts,
so every epoch sees the same samples.

``random_batches`` and ``endless_batches`` repeat batches without end, for timing steps (the profiler).

``batches(dataset, batch_size, shuffle=..., augment=..., seed=..., epoch=...)`` yields ``(x, y)``: ``x`` float32
NCHW normalised as the manifest records it (pixels scaled to ``input_range``, then ``(x - mean) / std``), ``y``
int64. Every random choice is a pure function of ``(seed, epoch, batch index)``, so a run resumed at any batch
sees exactly the batches the uninterrupted run would have seen (``start`` skips batches without drawing them).
"""
from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edge_lbp.core.artifact import Artifact, logits_output, model_input, normalization

# Files considered images in a class folder (anything else, e.g. a README or .DS_Store, is not data).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# Random-stream purposes inside a (seed, epoch) pair; fixed-length seeds because numpy's SeedSequence maps
# [s, e] and [s, e, 0] to the same stream.
_ORDER, _AUGMENT = 0, 1


class DataWarning(UserWarning):
    """Something in the data was skipped; the message names the files."""


@dataclass(eq=False)
class Dataset:
    """Decoded samples at the model's input size, and how to turn them into model inputs."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    classes: List[str]  # label i is classes[i]
    mean: np.ndarray  # float32 (C,)
    std: np.ndarray  # float32 (C,)
    input_range: Tuple[float, float]
    source: str
    skipped: int = 0  # unreadable files left out

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        return normalize(images, self.mean, self.std, self.input_range)


def normalize(images: np.ndarray, mean, std, input_range) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW: pixels scaled to ``input_range``, then ``(x - mean) / std`` per channel (the
    inference model's in-graph preprocessing does the same ops in the same order: ``runtime.inference``)."""
    low, high = input_range
    x = images.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def open_dataset(path, manifest, *, split: str = "train", classes: Optional[Sequence[str]] = None) -> Dataset:
    """Open an image folder (one sub-folder per class) or an ``.npz`` file for the model ``manifest`` describes.

    ``manifest``: the artifact's manifest (a dict, or the :class:`~edge_lbp.core.artifact.Artifact` itself).
    ``split``: a folder uses ``path/split`` when that sub-folder exists, else ``path``; an ``.npz`` uses ``x_<split>``/``y_<split>`` (for ``val`` also ``x_test``/``y_test``), else ``x``/``y``. ``classes``:
    the class order to label folders with (e.g. the training set's, so that validation labels agree); by default
    the sorted sub-folder names (an ``.npz`` has integer labels, named by its ``label_names`` if present).
    """
    manifest = manifest.manifest if isinstance(manifest, Artifact) else manifest
    path = Path(path)
    shape = model_input(manifest)["shape"]
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ValueError(f"the model's input shape {shape} is not a fixed (batch, C, H, W) image shape")
    channels, height, width = shape[1:]
    if channels not in (1, 3):
        raise ValueError(f"the model takes {channels}-channel images; image data has 1 (grayscale) or 3 (RGB)")
    norm = normalization(manifest)
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    input_range = tuple(norm["input_range"])
    size = (channels, height, width)
    if path.suffix == ".npz" and path.is_file():
        images, labels, names, skipped = _read_npz(path, split, size)
    elif path.is_dir():
        folder = path / split if (path / split).is_dir() else path
        images, labels, names, skipped = _read_folder(folder, size, classes)
        path = folder
    else:
        raise ValueError(f"{path}: no such image folder or .npz file")
    if len(labels) == 0:
        raise ValueError(f"{path}: no readable images")
    num_outputs = logits_output(manifest)["shape"][-1]
    if isinstance(num_outputs, int) and int(labels.max()) >= num_outputs:
        raise ValueError(f"{path}: label {int(labels.max())} ({len(names)} classes) but the model has "
                         f"{num_outputs} outputs")
    return Dataset(images, labels, list(names), mean, std, input_range, str(path), skipped)


def batches(dataset: Dataset, batch_size: int, *, shuffle: bool = True, augment: bool = False, seed: int = 0,
            epoch: int = 0, start: int = 0) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(x float32 NCHW, y int64)`` batches of one epoch, from batch index ``start`` on; the last may be smaller.

    ``shuffle``: a permutation drawn from ``(seed, epoch)``. ``augment``: per sample, a random crop of the image
    padded with zeros by 1/8 of its side (4 px at 32 px, the CIFAR recipe) and a horizontal flip with
    probability 1/2, drawn from ``(seed, epoch, batch index)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    n = len(dataset)
    order = _rng(seed, epoch, _ORDER).permutation(n) if shuffle else np.arange(n)
    for index in range(start, num_batches(dataset, batch_size)):
        chosen = order[index * batch_size:(index + 1) * batch_size]
        images = dataset.images[chosen]
        if augment:
            images = _augment(images, _rng(seed, epoch, _AUGMENT, index))
        yield dataset.normalize(images), dataset.labels[chosen]


def num_batches(dataset: Dataset, batch_size: int) -> int:
    return math.ceil(len(dataset) / batch_size)


def _rng(seed: int, epoch: int, purpose: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, purpose, index])


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, height, width, _ = images.shape
    pad = max(1, min(height, width) // 8)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    out = np.empty_like(images)
    for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
        crop = padded[i, dy:dy + height, dx:dx + width]
        out[i] = crop[:, ::-1] if flip else crop
    return out


def fit_image(image, size) -> np.ndarray:
    """A Pillow image, or a uint8 (H, W) or (H, W, 1 or 3) array -> uint8 (H, W, C) at ``size`` = (C, H, W): the
    largest centred crop of the target aspect ratio, resized (Pillow's bilinear filter, antialiased when
    shrinking), so shapes are never distorted."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.shape[2:] not in ((), (1,), (3,)):
            raise ValueError(f"an image array must be uint8 (H, W) or (H, W, 1 or 3); got {image.dtype} "
                             f"{image.shape}")
        image = Image.fromarray(image[..., 0] if image.shape[2:] == (1,) else image)
    channels, height, width = size
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        w, h = image.size
        scale = min(w / width, h / height)
        cw, ch = width * scale, height * scale
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        image = image.resize((width, height), Image.Resampling.BILINEAR, box=box)
    array = np.asarray(image, np.uint8)
    return array[:, :, None] if channels == 1 else array


def read_image(path, size) -> np.ndarray:
    """The image file ``path`` as uint8 (H, W, C) at ``size`` = (C, H, W) (``fit_image``); a file Pillow cannot
    decode raises one ValueError line naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return fit_image(image, size)
    except Exception as err:  # Pillow's decoders raise many types for corrupt bytes
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {' '.join(str(err).split())})") \
            from None


def _read_folder(folder: Path, size, classes):
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise ValueError(f"{folder}: no class sub-folders (expected one folder of images per class)")
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"{folder}: class folders {unknown[:5]} are not among the model's classes {names[:10]}")
    files = [(f, names.index(c)) for c in found for f in sorted((folder / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    images = np.empty((len(files), size[1], size[2], size[0]), np.uint8)
    labels = np.empty(len(files), np.int64)
    bad = []
    kept = 0
    for path, label in files:
        try:
            images[kept] = read_image(path, size)
        except ValueError as err:
            bad.append(str(err))
            continue
        labels[kept] = label
        kept += 1
    warn_unreadable(bad, stacklevel=4)
    return images[:kept], labels[:kept], names, len(bad)


def warn_unreadable(bad: Sequence[str], stacklevel: int = 2) -> None:
    """One :class:`DataWarning` line for the unreadable files ``bad`` (``read_image``'s messages) left out."""
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {'; '.join(bad[:3])}{more}", DataWarning,
                      stacklevel=stacklevel + 1)


def _read_npz(path: Path, split: str, size):
    keys = [(f"x_{split}", f"y_{split}")] + ([("x_test", "y_test")] if split == "val" else []) + [("x", "y")]
    try:
        with np.load(path, allow_pickle=False) as arrays:
            files = arrays.files
            found = next(((x, y) for x, y in keys if x in files and y in files), None)
            if found is not None:
                images, labels = arrays[found[0]], arrays[found[1]]
                names = arrays["label_names"] if "label_names" in files else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # truncated, not a zip, pickled objects
        raise ValueError(f"{path}: not a readable .npz file ({_npz_problem(path, err)})") from None
    if found is None:
        if not files:
            raise ValueError(f"{path}: an empty .npz file (no arrays)")
        raise ValueError(f"{path}: no arrays {' or '.join('/'.join(k) for k in keys)} (it has {', '.join(files)})")
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise ValueError(f"{path}: {found[0]} must be uint8 (N, H, W) or (N, H, W, C) with one label per image; "
                         f"got {images.dtype} {images.shape} and {len(labels)} labels")
    if labels.ndim != 1:
        raise ValueError(f"{path}: {found[1]} has shape {labels.shape}; expected one class index per image"
                         + (" (one-hot rows? store their argmax)" if labels.ndim == 2 else ""))
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: {found[1]} is {labels.dtype}; labels must be integer class indices")
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{path}: negative labels in {found[1]}")
    if names is not None and len(labels) and len(names) <= labels.max():
        raise ValueError(f"{path}: label_names has {len(names)} names but {found[1]} goes up to {labels.max()}")
    channels, height, width = size
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1 and channels == 3:  # grayscale data, RGB model: the usual channel repeat
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1:] != (height, width, channels):
        if images.shape[-1] not in (1, 3):
            raise ValueError(f"{path}: images with {images.shape[-1]} channels; expected 1 or 3 (HWC layout)")
        images = np.stack([fit_image(im, size) for im in images])
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(int(labels.max()) + 1)]
    return np.ascontiguousarray(images), labels, names, 0


def _npz_problem(path: Path, err: Exception) -> str:
    # numpy reads anything that is not a zip as a single pickled array and then says "contains pickled data".
    if not zipfile.is_zipfile(path):
        return "not a zip archive: an .npz is written by numpy.savez"
    return str(err)


def random_batches(manifest: dict, batch: int):
    """One random batch of the artifact's input shape, repeated: generating data must not be measured."""
    shape = model_input(manifest)["shape"][1:]
    classes = logits_output(manifest)["shape"][-1]
    if not all(isinstance(d, int) for d in [*shape, classes]):
        raise ValueError(f"the artifact's input shape {shape} or class count {classes} is not fixed: pass --data")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    while True:
        yield x, y


def endless_batches(path, manifest: dict, batch: int):
    """Full batches of the training split of ``path``, epoch after epoch. An epoch's smaller last batch is
    skipped so that every measured step has the same size."""
    dataset = open_dataset(path, manifest, split="train")
    if len(dataset) < batch:
        raise ValueError(f"{path}: {len(dataset)} training samples, fewer than one batch of {batch}")
    epoch = 0
    while True:
        for x, y in batches(dataset, batch, shuffle=True, seed=0, epoch=epoch):
            if len(y) == batch:
                yield x, y
        epoch += 1
