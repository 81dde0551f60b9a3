"""Classify images on the device: :class:`Predictor` (``Trainer.predict``, ``edge-lbp predict``).

An image is decoded as the training data was (``edge_lbp.data.read_image``: the centre crop of the model's aspect
ratio, resized to its input size), normalised as the artifact's manifest records, and run through the eval graph by
the session's engine (numba: the device requirements only). The outputs are named as the training data named its
classes (folder names, or an ``.npz``'s ``label_names``), which the checkpoint keeps.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from tqdm import tqdm

from edge_lbp.core.artifact import MANIFEST, logits_output, model_input, normalization
from edge_lbp.core.inference_metadata import class_names
from edge_lbp.data import IMAGE_SUFFIXES, fit_image, normalize, read_image, warn_unreadable


@dataclass(frozen=True)
class Prediction:
    image: str  # the file's path, or "#i" for the i-th image given as an array or a Pillow image
    top: List[Tuple[str, float]]  # (class name, probability), the most probable first

    @property
    def label(self) -> str:
        return self.top[0][0]

    def record(self) -> dict:
        """``{"image": ..., "top": [{"class": ..., "probability": ...}, ...]}`` (what ``--json`` prints)."""
        return {"image": self.image, "top": [{"class": name, "probability": p} for name, p in self.top]}


class Predictor:
    """A session's model as a classifier: ``predict(images)`` gives each image's top-k class names with their
    probabilities. ``classes``: the name of each output (default, and past the names given: its index)."""

    def __init__(self, session, classes=None):
        manifest = session.artifact.manifest
        shape = model_input(manifest)["shape"]
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[1] not in (1, 3):
            raise ValueError(f"{session.artifact.folder}: its input {shape} is not a fixed (batch, 1 or 3, H, W) "
                             "image: there are no images to classify with it")
        self.session, self.size = session, tuple(shape[1:])
        self.classes = class_names(classes, logits_output(manifest)["shape"][-1])
        self._normalization = normalization(manifest)

    @classmethod
    def open(cls, model, *, artifact=None, engine: str = "auto", threads=None) -> "Predictor":
        """``model``: a checkpoint folder (``train --checkpoint``, a fleet round; its parameters and class names,
        on ``artifact``, by default the artifact it was saved from) or an artifact folder (its exported
        parameters; the outputs named by index)."""
        from edge_lbp.checkpoint import CheckpointError, checkpoint_metadata, has_checkpoint
        from edge_lbp.trainer import Trainer

        path = Path(model)
        if has_checkpoint(path):
            if artifact is None:
                artifact = checkpoint_metadata(path).get("artifact")
                if not isinstance(artifact, str):
                    raise CheckpointError(f"{model}: the checkpoint records no artifact; name it (--artifact DIR)")
            trainer = Trainer(artifact, engine=engine, threads=threads)
            trainer.load_parameters(path)
        elif (path / MANIFEST).is_file():
            if artifact is not None:
                raise ValueError(f"{model}: an artifact folder itself; --artifact goes with a checkpoint")
            trainer = Trainer(path, engine=engine, threads=threads)
        else:
            raise ValueError(f"{model}: neither a checkpoint folder nor an artifact folder (no checkpoint.json, "
                             f"no {MANIFEST})")
        return cls(trainer.session, trainer.classes)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) images at the model's input size -> (N, classes) float64 softmax probabilities."""
        logits = np.asarray(self.session.eval_step(normalize(images, **self._normalization)), np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, images, *, top_k: int = 3, batch_size: int = 32, progress=False) -> List[Prediction]:
        """One :class:`Prediction` per image, in order. ``images``: a path, an array or a Pillow image, a list
        of them, or a uint8 (N, H, W, C) array; a folder stands for the image files under it (sorted, sub-folders too; one it cannot decode is
        skipped with a warning line naming it), a file named on its own that cannot be decoded raises one line;
        an array is uint8 (H, W) or (H, W, C), of any size (resized as a file would be). ``progress``: a bar on
        stderr when it is a terminal; ``"always"`` forces it."""
        if int(top_k) < 1 or int(batch_size) < 1:
            raise ValueError(f"top_k and batch_size must be at least 1; got {top_k}, {batch_size}")
        items, top_k, results, bad = _expand(images), min(int(top_k), len(self.classes)), [], []
        bar = tqdm(total=len(items), desc="predict", file=sys.stderr, unit="image", mininterval=0.1,
                   disable=False if progress == "always" else (None if progress else True))
        with bar:
            for start in range(0, len(items), batch_size):
                names, pixels = [], []
                for name, item, in_folder in items[start:start + batch_size]:
                    try:
                        pixels.append(read_image(item, self.size) if isinstance(item, Path)
                                      else fit_image(item, self.size))
                    except ValueError as err:
                        if not in_folder:
                            raise
                        bad.append(str(err))
                        continue
                    names.append(name)
                if names:
                    for name, row in zip(names, self.probabilities(np.stack(pixels))):
                        order = np.argsort(-row, kind="stable")[:top_k]
                        results.append(Prediction(name, [(self.classes[i], float(row[i])) for i in order]))
                bar.update(len(items[start:start + batch_size]))
        warn_unreadable(bad)
        if not results:
            raise ValueError(f"none of the {len(items)} images could be decoded")
        return results


def _expand(images) -> list:
    """``(name, image, in_folder)`` for every image ``images`` stands for (see ``Predictor.predict``)."""
    if not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]  # one path, array or Pillow image
    items = []
    for index, item in enumerate(images):
        if not isinstance(item, (str, Path)):  # an array or a Pillow image
            items.append((f"#{index}", item, False))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
            if not files:
                raise ValueError(f"{path}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            items.extend((str(f), f, True) for f in files)
        elif path.is_file():
            items.append((str(path), path, False))
        else:
            raise ValueError(f"{path}: no such image file or folder")
    if not items:
        raise ValueError("no images to classify")
    return items
