"""The artifact folder, the unit that travels from the workstation to the device: its layout, its manifest's
schema, and the one reader and verifier. numpy, onnx and safetensors only.

Layout (every path in the manifest is relative to the folder, so the folder moves as a unit)::

    manifest.json          the schema below; ``checksums`` covers every other file
    training_model.onnx    the training graph (in ORT's layout, ours or ORT's) after the LBP rewrite
    eval_model.onnx        the eval graph (forward + loss)
    optimizer_model.onnx   the optimizer graph (AdamWOptimizer or SGDOptimizerV2)
    params.safetensors     every parameter, trainable and frozen, float32 (readable without ONNX Runtime)
    ort/checkpoint         ORT's own checkpoint (what the ``ort`` engine loads), where the export had ORT-training

The exporter (``edge_lbp.export.writer``) writes through the names defined here; the engines, the trainer, the
data readers and the inference export read through :class:`Artifact` and :func:`logits_output`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict

import numpy as np
import onnx

from edge_lbp.core.files import sha256

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPH_FILES = {"training": "training_model.onnx", "eval": "eval_model.onnx", "optimizer": "optimizer_model.onnx"}
PARAMS_FILE = "params.safetensors"
ORT_CHECKPOINT = "ort/checkpoint"
BATCH = "batch"  # how the manifest spells the batch dimension of an input or output shape
INPUT_RANGE = [0.0, 1.0]  # images are scaled to this range before (x - mean) / std

# Keys every manifest has, with their JSON types; optional keys are typed when present.
_REQUIRED = {"schema_version": int, "graphs": dict, "params": str, "labels": str, "inputs": list, "outputs": list,
             "trainable": list, "frozen": list, "checksums": dict}
_OPTIONAL = {"ort_checkpoint": str, "optimizer": dict, "normalization": dict, "lbp": dict, "model": dict,
             "loss": dict, "trainable_set": str, "method": dict}
BACKPROP = {"name": "backprop"}  # the method of an artifact whose manifest names none


class ArtifactError(ValueError):
    """The folder is not a usable artifact; the message names the file and what is wrong."""


def logits_output(manifest: dict) -> dict:
    """The model's output record ``{name, dtype, shape}``: the logits, ``shape[-1]`` classes."""
    return manifest["outputs"][0]


def training_method(manifest: dict) -> dict:
    """How the artifact trains: ``{"name": "backprop"}``, ``{"name": "zo-hybrid", "blocks": K, "zo": [names]}``
    (the ``zo`` parameters by SPSA, the trainable ones by the training graph) or ``{"name": "side", "taps":
    [tensor names], ...}`` (a side network reading those backbone tensors)."""
    return manifest.get("method", BACKPROP)


def model_input(manifest: dict) -> dict:
    """The model's (image) input record ``{name, dtype, shape}``, ``shape[0]`` spelled ``"batch"``."""
    return manifest["inputs"][0]


def normalization(manifest: dict) -> dict:
    """How pixels become the model's input: ``{"mean": [...], "std": [...], "input_range": [low, high]}``, pixels
    of 0..255 scaled to ``input_range``, then ``(x - mean) / std`` per channel (the identity on [0, 1] when the
    manifest records none)."""
    channels = model_input(manifest)["shape"][1]
    norm = manifest.get("normalization", {})
    return {"mean": [float(v) for v in norm.get("mean", [0.0] * channels)],
            "std": [float(v) for v in norm.get("std", [1.0] * channels)],
            "input_range": [float(v) for v in norm.get("input_range", INPUT_RANGE)]}


@dataclass(frozen=True)
class Artifact:
    folder: Path
    manifest: dict

    @classmethod
    def open(cls, folder, *, verify: bool = True) -> "Artifact":
        """Read and check the manifest; with ``verify`` also every file against its checksum."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{folder}: no {MANIFEST}; is it an artifact folder made by `edge-lbp export`?")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtifactError(f"{path}: not valid JSON ({err})") from None
        _check_schema(manifest, path)
        artifact = cls(folder, manifest)
        for relative in (*artifact.named_files(), *manifest["checksums"]):
            artifact.path(relative)
        if verify:
            artifact.verify()
        return artifact

    def named_files(self):
        """The files the manifest names: the three graphs, the parameters and (when present) ORT's checkpoint."""
        manifest = self.manifest
        return [*manifest["graphs"].values(), manifest["params"]] + (
            [manifest["ort_checkpoint"]] if "ort_checkpoint" in manifest else [])

    def path(self, relative: str) -> Path:
        """``relative`` inside the folder; a path that would leave it is refused."""
        parts = PurePosixPath(relative).parts
        resolved = (self.folder / relative).resolve()  # a symbolic link may point out of the folder too
        if (not parts or PurePosixPath(relative).is_absolute() or ".." in parts
                or self.folder.resolve() not in resolved.parents):
            raise ArtifactError(f"{self.folder / MANIFEST}: path {relative!r} leaves the artifact folder")
        return resolved

    def verify(self) -> None:
        """Every file the manifest names is covered by its checksums, every file in the folder is listed, and every
        listed file exists with its recorded SHA-256."""
        checksums = self.manifest["checksums"]
        listed = [*self.named_files()]
        listed += sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                         if p.is_file() and p.name != MANIFEST)
        unlisted = [r for r in listed if r not in checksums]
        if unlisted:
            raise ArtifactError(f"{self.folder / unlisted[0]}: not covered by the manifest's checksums")
        for relative, expected in checksums.items():
            path = self.path(relative)
            if not path.is_file():
                raise ArtifactError(f"{path}: listed in the manifest but missing")
            if sha256(path) != expected:
                raise ArtifactError(f"{path}: checksum mismatch (the file changed after export)")

    def graph(self, kind: str) -> onnx.ModelProto:
        """``training``, ``eval`` or ``optimizer``."""
        path = self.path(self.manifest["graphs"][kind])
        try:
            return onnx.load(str(path))
        except Exception as err:  # protobuf raises several types for corrupt bytes
            raise ArtifactError(f"{path}: not a readable ONNX graph ({type(err).__name__})") from None

    def inference_graph(self) -> onnx.ModelProto:
        """The eval graph cut down to the logits: the eval graph ends in the loss, which needs labels."""
        from edge_lbp.core.graphs import prune_to_outputs

        return prune_to_outputs(self.graph("eval"), [self.logits["name"]])

    def parameters(self) -> Dict[str, np.ndarray]:
        """All parameters as writable, contiguous float32 arrays (the engine updates them in place).

        Read one tensor at a time: reading the whole file and then copying each tensor out held the parameters
        twice, and the freed half stayed in the process's heap (ViT-B/16: 1.10 GB resident after loading for
        330 MB of parameters)."""
        from safetensors import safe_open

        path = self.path(self.manifest["params"])
        names = self.manifest["trainable"] + self.manifest["frozen"]
        try:
            with safe_open(str(path), framework="np") as f:
                missing = [n for n in names if n not in f.keys()]
                if missing:
                    raise ArtifactError(f"{path}: parameters {missing[:5]} are missing")
                # safetensors hands each tensor out in a buffer of its own, writable: no copy unless the dtype
                # or layout differs.
                return {n: np.require(f.get_tensor(n), np.float32, ["C_CONTIGUOUS", "WRITEABLE"]) for n in names}
        except ArtifactError:
            raise
        except Exception as err:
            raise ArtifactError(f"{path}: not a readable safetensors file ({err})") from None

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the manifest's file checksums: what a checkpoint binds to (the folder may move)."""
        import hashlib

        listed = json.dumps(sorted(self.manifest["checksums"].items())).encode()
        return hashlib.sha256(listed).hexdigest()

    @property
    def input_name(self) -> str:
        return model_input(self.manifest)["name"]

    @property
    def logits(self) -> dict:
        return logits_output(self.manifest)

    @property
    def labels(self) -> str:
        return self.manifest["labels"]

    @property
    def trainable(self):
        return list(self.manifest["trainable"])


def verify_artifact(folder) -> dict:
    """Check an artifact folder completely (schema, paths, checksums, no unlisted file); return its manifest."""
    return Artifact.open(folder, verify=True).manifest


def _check_schema(manifest, path) -> None:
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: the manifest is a JSON {type(manifest).__name__}, not an object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema version {version!r}, this edge_lbp reads {SCHEMA_VERSION}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in manifest:
            if key in _REQUIRED:
                raise ArtifactError(f"{path}: missing field {key!r}")
        elif not isinstance(manifest[key], kind):
            raise ArtifactError(f"{path}: field {key!r} is a {type(manifest[key]).__name__}, "
                                f"expected a {kind.__name__}")
    missing = [kind for kind in GRAPH_FILES if not isinstance(manifest["graphs"].get(kind), str)]
    if missing:
        raise ArtifactError(f"{path}: field 'graphs' names no {missing[0]} graph")
    for key in ("inputs", "outputs"):
        records = manifest[key]
        if not records or not all(isinstance(r, dict) and isinstance(r.get("name"), str)
                                  and isinstance(r.get("shape"), list) for r in records):
            raise ArtifactError(f"{path}: field {key!r} must list at least one {{name, dtype, shape}} record")
    names = manifest["trainable"] + manifest["frozen"]
    if not all(isinstance(n, str) for n in names) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in manifest["checksums"].items()):
        raise ArtifactError(f"{path}: parameter names and checksums must be strings")
