"""The demo's training artifact, shipped inside the package so that ``edge-lbp demo`` runs on a board without torch
or ONNX Runtime (device side: numpy and safetensors only).

It is the bundled ``vit-c10`` backbone exported with the demo's settings below (``python -m edge_lbp.bundle``
writes it, a test re-exports it and compares). Its parameters differ from the backbone's only in the new 8-class
head, so the package does not carry a second 4.8 MB copy of the weights: ``assets/vit_c10_demo/`` holds the
artifact without ``params.safetensors``, ``assets/vit_c10_demo_head.safetensors`` the head, and :func:`assemble`
writes the full artifact folder from the two and the backbone. The manifest's checksums cover the rebuilt
``params.safetensors``, so the assembled folder passes the same verifier as any exported artifact, byte for byte.
"""
from __future__ import annotations

import json
import shutil
from importlib.resources import as_file, files
from pathlib import Path

from edge_lbp.core import defaults

BACKBONE = "vit-c10"
BACKBONE_FILE = "vit_c10.safetensors"
FOLDER = "vit_c10_demo"  # the artifact minus its parameters, in edge_lbp/assets
HEAD_FILE = "vit_c10_demo_head.safetensors"  # the parameters that are not the backbone's
HEAD_PREFIX = "head."
# The export settings of the packaged artifact: the demo's task (8 generated classes) and the exporter's defaults.
CLASSES = 8
SETTINGS = {"lbp": defaults.SELECTION, "block": defaults.EXPORT_BLOCK, "method": "all", "optimizer": "adamw", "lr": 1e-3}


def assets() -> Path:
    """The package's asset folder (a plain folder in a wheel or a checkout)."""
    with as_file(files("edge_lbp") / "assets") as path:
        return Path(path)


def matches(classes: int, lbp: str, block) -> bool:
    """Whether the packaged artifact is what an export with these settings would give."""
    return classes == CLASSES and lbp == SETTINGS["lbp"] and block == SETTINGS["block"]


def describe() -> str:
    return f"{CLASSES} classes, --lbp {SETTINGS['lbp']} --block {SETTINGS['block']}"


def assemble(out_dir) -> Path:
    """Write the packaged artifact to ``out_dir`` (a new folder) and verify it; return its path."""
    from safetensors.numpy import load_file, save_file

    from edge_lbp.core.artifact import PARAMS_FILE, verify_artifact

    source, out = assets() / FOLDER, Path(out_dir)
    out.mkdir(parents=True)
    for path in source.iterdir():  # contents only: copying metadata reads xattrs, which qemu-user cannot redirect
        shutil.copyfile(path, out / path.name)
    manifest = json.loads((out / "manifest.json").read_text())
    head = load_file(str(assets() / HEAD_FILE))
    backbone = load_file(str(assets() / BACKBONE_FILE))
    tensors = {n: head[n] if n.startswith(HEAD_PREFIX) else backbone[n]
               for n in manifest["trainable"] + manifest["frozen"]}
    save_file(tensors, str(out / PARAMS_FILE))
    verify_artifact(out)  # the checksum of params.safetensors was taken at export: the rebuilt file must equal it
    return out
