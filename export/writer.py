"""Writes the artifact folder whose layout and schema ``edge_lbp.core.artifact`` defines (the device side owns
the format; the workstation writes through its names, and checks what it wrote with the same verifier)."""

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from edge_lbp.core.files import sha256, umask
from edge_lbp.core.artifact import (BATCH, GRAPH_FILES, INPUT_RANGE, MANIFEST, ORT_CHECKPOINT, PARAMS_FILE,
                                       SCHEMA_VERSION, verify_artifact)


def write_artifact(out_dir, *, forward, training, ort_dir, trainable, frozen, labels, lr, lbp, model,
                   trainable_set, normalization, method=None):
    """Write the artifact folder ``out_dir`` and return its manifest (a dict).

    ``forward``: the forward ModelProto (parameter values and the model's inputs/outputs are read from it);
    ``training``: the rewritten training ModelProto; ``ort_dir``: the folder ``generate_training_artifacts`` wrote
    (eval and optimizer graphs and, when it wrote one, ORT's checkpoint are copied from it byte for byte); ``lbp``: the LBP config and
    per-layer table; ``model``: the source description; ``normalization``: ``(mean, std)`` per channel;
    ``method``: the training method's record (``edge_lbp.core.artifact.training_method``), None for plain backprop.

    The folder is assembled next to ``out_dir`` and then moved into place, so a failure never leaves a half
    artifact. An existing ``out_dir`` is replaced only when it is empty or holds an artifact (a manifest).
    """
    import onnx

    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(stage, 0o777 & ~umask())  # mkdtemp makes it 0700: the artifact must be readable as any folder is
    try:
        onnx.save(training, stage / GRAPH_FILES["training"])
        for key in ("eval", "optimizer"):
            shutil.copyfile(Path(ort_dir) / GRAPH_FILES[key], stage / GRAPH_FILES[key])
        checkpoint = Path(ort_dir) / "checkpoint"
        if checkpoint.is_file():  # written where onnxruntime-training is installed (the ort engine loads it)
            (stage / ORT_CHECKPOINT).parent.mkdir()
            shutil.copyfile(checkpoint, stage / ORT_CHECKPOINT)
        write_params(stage / PARAMS_FILE, forward, trainable + frozen)
        optimizer_graph = onnx.load(stage / GRAPH_FILES["optimizer"])
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "edge_lbp_version": _version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "graphs": dict(GRAPH_FILES),
            "params": PARAMS_FILE,
            "model": model,
            "inputs": [_value_info(v) for v in _graph_inputs(forward)],
            "outputs": [_value_info(v) for v in forward.graph.output],
            "labels": labels,
            "loss": {"name": "cross_entropy", "reduction": "mean", "output": training.graph.output[0].name},
            "optimizer": {**optimizer_record(optimizer_graph), "lr": lr},
            "trainable_set": trainable_set,
            "trainable": list(trainable),
            "frozen": list(frozen),
            "lbp": lbp,
            "normalization": {"mean": list(normalization[0]), "std": list(normalization[1]),
                              "input_range": INPUT_RANGE},
            "checksums": {_relative(p, stage): sha256(p) for p in _files(stage)},
        }
        if checkpoint.is_file():
            manifest["ort_checkpoint"] = ORT_CHECKPOINT
        if method is not None:
            manifest["method"] = method
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        for path in stage.rglob("*"):  # safetensors and ORT write 0600: the artifact is as readable as any folder
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
        verify_artifact(stage)  # the device's own check, before anything existing is replaced
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest


def _check_replaceable(out):
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"{out}: folder is not empty and holds no artifact; refusing to replace it")


def write_params(path, forward, names):
    """``names`` (in that order) from the forward model's initializers to a safetensors file, as float32."""
    import numpy as np
    from onnx import numpy_helper
    from safetensors.numpy import save_file

    values = {t.name: t for t in forward.graph.initializer}
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"parameter {missing[0]!r} is not an initializer of the forward model")
    save_file({n: np.ascontiguousarray(numpy_helper.to_array(values[n]), dtype=np.float32) for n in names}, path)


def optimizer_record(optimizer_graph):
    """The optimizer's name and the hyper-parameters ORT baked into its graph (the learning rate is a graph input,
    set at run time, so it is not among them)."""
    (node,) = optimizer_graph.graph.node
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "AdamWOptimizer":
        return {"name": "adamw", "betas": [_attr_float(attrs, "alpha"), _attr_float(attrs, "beta")],
                "eps": _attr_float(attrs, "epsilon"), "weight_decay": _attr_float(attrs, "weight_decay"),
                "bias_correction": bool(attrs["correct_bias"].i)}
    if node.op_type == "SGDOptimizerV2":
        # The op has no momentum and no weight decay (not even as attributes): plain SGD.
        return {"name": "sgd", "momentum": 0.0, "weight_decay": 0.0}
    raise ValueError(f"optimizer graph node {node.name!r} has an unknown op {node.op_type}")


def _attr_float(attrs, name):
    # ONNX stores float32; 7 significant digits give back the value that was written (0.9, not 0.899999976).
    return float(f"{attrs[name].f:.7g}")


def _graph_inputs(model):
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _value_info(value):
    """name, dtype (numpy spelling) and shape; dimension 0 is the batch, spelled ``"batch"``."""
    from onnx import helper

    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    shape = [BATCH] + dims[1:] if dims else []
    return {"name": value.name, "dtype": helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}


def _version():
    from edge_lbp._version import __version__

    return __version__


def _files(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST)


def _relative(path, folder):
    return Path(path).relative_to(folder).as_posix()


def artifact_size(folder):
    """Bytes of every file in the folder, manifest included."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
