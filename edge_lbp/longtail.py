"""Long-tailed data: making a long-tailed split for experiments, and accuracy by how many training images a class had.

``make_longtail(source, out, imbalance)`` keeps, of class ``c`` among ``C`` (in label order, class 0 the head),
``n_max * imbalance ** (-c / (C - 1))`` training images (rounded, at least one, never more than it has; ``n_max``
the largest class), chosen at random by ``seed``: the exponential profile of the long-tail literature (Cui et al.,
CVPR 2019; Cao et al., NeurIPS 2019: CIFAR-10-LT and CIFAR-100-LT). The other splits are copied whole, so that
accuracy is measured on balanced data. ``source`` is an ``.npz`` (``x_train``/``y_train``, or ``x``/``y``) or an
image folder (``train/<class>/`` or ``<class>/``), and ``out`` the same kind.

``shot_groups(train_counts)`` names each class ``many`` (more than 100 training images), ``medium`` (20 to 100)
or ``few`` (under 20), as Liu et al. (OLTR, CVPR 2019) and the long-tail papers since report accuracy;
``accuracy_by_group`` pools a per-class evaluation over those groups.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from edge_lbp.data import IMAGE_SUFFIXES

MANY, FEW = 100, 20  # a class with more than MANY training images is "many", under FEW "few", else "medium"
GROUPS = ("many", "medium", "few")


def longtail_counts(available: Sequence[int], imbalance: float) -> List[int]:
    """The number of images each class keeps for the ratio ``imbalance`` (largest ÷ smallest class, >= 1)."""
    if not imbalance >= 1:
        raise ValueError(f"the imbalance ratio is the largest class over the smallest: at least 1, got {imbalance}")
    if len(available) < 2 or min(available) < 1:
        raise ValueError(f"a long-tailed split needs two or more classes with images; the counts are {list(available)}")
    top, last = max(available), len(available) - 1
    return [min(n, max(1, round(top * imbalance ** (-c / last)))) for c, n in enumerate(available)]


def class_counts(labels, num_classes: Optional[int] = None) -> List[int]:
    return np.bincount(np.asarray(labels, np.int64), minlength=num_classes or 0).tolist()


def shot_groups(train_counts: Sequence[int], many: int = MANY, few: int = FEW) -> List[str]:
    """``many``, ``medium`` or ``few`` for each class, from its number of training images."""
    return ["many" if n > many else "few" if n < few else "medium" for n in train_counts]


def accuracy_by_group(correct: Sequence[int], samples: Sequence[int],
                      groups: Sequence[str]) -> Dict[str, Optional[float]]:
    """Accuracy over the evaluated samples of each group's classes (None for a group without any)."""
    result = {}
    for group in GROUPS:
        members = [k for k, g in enumerate(groups) if g == group and k < len(samples)]
        total = sum(samples[k] for k in members)
        result[group] = sum(correct[k] for k in members) / total if total else None
    return result


def _keep(labels, imbalance, seed):
    """Indices of the samples a long-tailed split keeps, in their original order, and the kept counts."""
    labels = np.asarray(labels, np.int64)
    available = class_counts(labels)
    if 0 in available:
        raise ValueError(f"class {available.index(0)} has no training images: a long-tailed split needs every class")
    wanted = longtail_counts(available, imbalance)
    rng = np.random.default_rng(seed)
    kept = [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in enumerate(wanted)]
    return np.sort(np.concatenate(kept)), wanted


def make_longtail(source, out, imbalance: float, *, seed: int = 0) -> List[int]:
    """Write a long-tailed copy of ``source`` to ``out`` (see the module); returns the kept count per class."""
    source, out = Path(source), Path(out)
    if out.exists():
        raise ValueError(f"{out}: already exists (a long-tailed split is written to a new path)")
    if source.suffix == ".npz" and source.is_file():
        if out.suffix != ".npz":
            raise ValueError(f"{out}: the split of an .npz file is an .npz file")
        return _longtail_npz(source, out, imbalance, seed)
    if source.is_dir():
        return _longtail_folder(source, out, imbalance, seed)
    raise ValueError(f"{source}: no such image folder or .npz file")


def _longtail_npz(source, out, imbalance, seed):
    try:
        with np.load(source, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{source}: not a readable .npz file ({err})") from None
    x, y = next(((x, y) for x, y in (("x_train", "y_train"), ("x", "y")) if x in arrays and y in arrays), (None, None))
    if x is None:
        raise ValueError(f"{source}: no arrays x_train/y_train or x/y (it has {', '.join(arrays)})")
    keep, counts = _keep(arrays[y], imbalance, seed)
    arrays[x], arrays[y] = arrays[x][keep], arrays[y][keep]
    np.savez(out, **arrays)
    return counts


def _longtail_folder(source, out, imbalance, seed):
    train = source / "train" if (source / "train").is_dir() else source
    classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{train}: no class sub-folders (expected one folder of images per class)")
    files = [(f, k) for k, c in enumerate(classes) for f in sorted((train / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    keep, counts = _keep([k for _, k in files], imbalance, seed)
    target = out / "train" if train != source else out
    for c in classes:
        (target / c).mkdir(parents=True)
    for i in keep:
        path, k = files[i]
        shutil.copy2(path, target / classes[k] / path.name)
    if train != source:  # the other splits (val, test) as they are
        for split in (d for d in source.iterdir() if d.is_dir() and d.name != "train" and not d.name.startswith(".")):
            shutil.copytree(split, out / split.name)
    return counts
