"""What an inference model says about itself: the ONNX ``metadata_props`` of every inference model edge_lbp writes
(``train --export-onnx``, ``Trainer.export_inference``, ``edge_lbp.methods.export_inference``, the fleet's round
models), so that a runtime elsewhere feeds it and names its outputs from the file alone.

One definition: :data:`KEYS` (docs/deploy.md lists them; tests/test_predict.py checks the page against this table).
Lists are JSON, the other values plain strings; every key is written, always.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

from edge_lbp.core.artifact import logits_output, model_input, normalization

IN_GRAPH, OUTSIDE = "in-graph", "outside"
TENSOR = "tensor"  # the layout of an input that is not an image (a token sequence): fed as it is

KEYS = {
    "edge_lbp.classes": "JSON list: the class name of each output, in order (an output the training data did not "
                        "name is called by its index)",
    "edge_lbp.preprocessing": f"`{OUTSIDE}`: feed float32 NCHW, scaled and normalised as below; `{IN_GRAPH}`: "
                              "feed the uint8 NHWC pixels, the graph scales and normalises them",
    "edge_lbp.input_layout": f"`NCHW` (preprocessing outside) or `NHWC` (in the graph); `{TENSOR}` for an input "
                             "that is not an image (a token sequence, fed as it is)",
    "edge_lbp.input_dtype": "`float32` (preprocessing outside) or `uint8` (in the graph)",
    "edge_lbp.input_size": "JSON `[height, width]`: resize every image to this before feeding it (the device "
                           "crops the centre to this aspect ratio, then resizes bilinearly); a tensor input: its "
                           "shape after the batch",
    "edge_lbp.color": "`RGB` or `L` (grayscale): the channels, in order; `none` for a tensor input",
    "edge_lbp.input_range": "JSON `[low, high]`: pixels 0..255 are scaled to this range first",
    "edge_lbp.mean": "JSON list, one per channel: subtracted after scaling",
    "edge_lbp.std": "JSON list, one per channel: divides after the mean is subtracted",
    "edge_lbp.output": "`logits`: one score per class; their softmax gives the probabilities",
}


def class_names(classes: Optional[Sequence], count: int) -> List[str]:
    """The name of each of the model's ``count`` outputs: ``classes`` (the training data's), an output past them
    (or every output, without names) called by its index."""
    names = [str(c) for c in classes or []]
    if len(names) > count:
        raise ValueError(f"{len(names)} class names ({', '.join(names[:5])}, ...) for a model with {count} outputs")
    return names + [str(i) for i in range(len(names), count)]


def describe(manifest: dict, classes: Optional[Sequence], *, in_graph: bool) -> Dict[str, str]:
    """The ``metadata_props`` of the inference model of the artifact ``manifest``, its outputs named ``classes``;
    ``in_graph``: the scaling and normalisation are the graph's first nodes (image models only)."""
    shape, norm = model_input(manifest)["shape"], normalization(manifest)
    image = len(shape) == 4
    if in_graph and not image:
        raise ValueError(f"the model's input {shape} is not an image (batch, C, H, W): its preprocessing cannot go "
                         "into the graph")
    return {
        "edge_lbp.classes": json.dumps(class_names(classes, logits_output(manifest)["shape"][-1])),
        "edge_lbp.preprocessing": IN_GRAPH if in_graph else OUTSIDE,
        "edge_lbp.input_layout": ("NHWC" if in_graph else "NCHW") if image else TENSOR,
        "edge_lbp.input_dtype": "uint8" if in_graph else "float32",
        "edge_lbp.input_size": json.dumps(list(shape[2:] if image else shape[1:])),
        "edge_lbp.color": {1: "L", 3: "RGB"}.get(shape[1], "none") if image else "none",
        "edge_lbp.input_range": json.dumps(norm["input_range"]),
        "edge_lbp.mean": json.dumps(norm["mean"]),
        "edge_lbp.std": json.dumps(norm["std"]),
        "edge_lbp.output": "logits",
    }
