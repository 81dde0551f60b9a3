"""Dump the structure of ORT training graphs around chosen linear layers (a script, not a test).

    python tests/benchmarks/dump_ort_graph.py                      # the defaults behind export/NOTES_ort_graphs.md
    python tests/benchmarks/dump_ort_graph.py --preset vit-tiny --layer blocks.0.attn.qkv.weight --out /tmp/arts

For every preset it exports the model, generates artifacts (trainable=all) once per optimizer, prints the op-type
set (with domains) of the training, eval and optimizer graphs, and for every layer (named by its weight) prints the
forward nodes, what produces the layer input, every backward node named ``<forward node>_Grad/...`` (plus fused
nodes that read the layer's bias), every consumer of the layer input in the training graph, and the nodes that
consume the weight and bias gradients.
"""

import argparse
import tempfile
from pathlib import Path

import onnx

from edge_lbp.export.models import build_model
from edge_lbp.export.onnx_export import export_forward
from edge_lbp.export.training import generate_training_artifacts, parameter_names

DEFAULT_LAYERS = {
    "vit-tiny": ["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "blocks.1.attn.qkv.weight", "head.weight"],
    "efficientformer-tiny": ["stages.2.fc1.weight", "stages.2.fc2.weight", "blocks.0.mlp.fc1.weight"],
}
GRAPHS = ("training_model", "eval_model", "optimizer_model")


def describe(node):
    attrs = ", ".join(f"{a.name}={_attr(a)}" for a in node.attribute)
    domain = node.domain or "ai.onnx"
    return f"`{node.name}` {domain}::{node.op_type}({', '.join(node.input)}) -> {', '.join(node.output)}" + (
        f" [{attrs}]" if attrs else "")


def _attr(attribute):
    value = onnx.helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else value


def op_types(model):
    return sorted({f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node})


def forward_nodes(graph, weight):
    """The forward nodes of the layer owning ``weight``: Transpose(W) -> MatMul, or Conv / Gemm, plus the bias
    consumer (Add, or a node ORT fused the Add into) when the layer has a bias."""
    consumers = _consumers(graph)
    first = [n for n in consumers.get(weight, []) if "_Grad/" not in n.name]
    nodes = list(first)
    for node in first:
        if node.op_type == "Transpose":
            nodes += [n for n in consumers.get(node.output[0], []) if "_Grad/" not in n.name]
    nodes += [n for n in consumers.get(_bias_of(weight), []) if "_Grad/" not in n.name and n not in nodes]
    return nodes


def _bias_of(weight):
    return weight[: -len("weight")] + "bias"


def _consumers(graph):
    table = {}
    for node in graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def dump_layer(model, weight):
    graph = model.graph
    consumers = _consumers(graph)
    producers = {o: n for n in graph.node for o in n.output}
    fwd = forward_nodes(graph, weight)
    lines = [f"#### layer `{weight}`", "", "forward nodes:"]
    lines += [f"- {describe(n)}" for n in fwd]
    main = next(n for n in fwd if n.op_type in ("MatMul", "Conv", "Gemm"))
    act = main.input[0]
    src = producers.get(act)
    lines += ["", f"layer input `{act}` produced by: " + (describe(src) if src else "graph input")]
    prefixes = tuple(n.name + "_Grad/" for n in fwd)
    bias = _bias_of(weight)
    # ORT renames nodes it fuses (BiasGelu, ...), so their backward nodes are found by the bias they read or write.
    touches_bias = {bias, bias + "_grad"}
    grad_nodes = [n for n in graph.node if n.name.startswith(prefixes)
                  or ("_Grad/" in n.name and touches_bias.intersection([*n.input, *n.output]))]
    lines += ["", "backward nodes:"] + [f"- {describe(n)}" for n in grad_nodes]
    lines += ["", f"all consumers of the layer input `{act}` in the training graph:"]
    lines += [f"- {describe(n)}" for n in consumers.get(act, [])]
    for grad in (weight + "_grad", bias + "_grad"):
        lines += ["", f"consumers of `{grad}`:"] + [f"- {describe(n)}" for n in consumers.get(grad, [])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="model preset (repeatable); default: the four tiny ones")
    parser.add_argument("--layer", action="append", help="weight name of a layer to dump (repeatable)")
    parser.add_argument("--optimizer", action="append", choices=("adamw", "sgd"))
    parser.add_argument("--out", type=Path, help="keep the artifacts here (default: a temporary folder)")
    args = parser.parse_args(argv)
    presets = args.preset or ["vit-tiny", "deit-tiny", "swin-tiny", "efficientformer-tiny"]
    optimizers = args.optimizer or ["adamw", "sgd"]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for preset in presets:
            module = build_model(preset)
            cfg = module.config
            forward = export_forward(module, (cfg.in_chans, cfg.img_size, cfg.img_size))
            print(f"## {preset}\n\nforward graph ops: {', '.join(op_types(forward))}\n")
            for optimizer in optimizers:
                folder = root / f"{preset}-{optimizer}"
                generate_training_artifacts(forward, folder, parameter_names(forward), [], optimizer=optimizer)
                for graph in GRAPHS:
                    ops = op_types(onnx.load(folder / f"{graph}.onnx"))
                    print(f"{optimizer} {graph} ops: {', '.join(ops)}\n")
            training = onnx.load(root / f"{preset}-{optimizers[0]}" / "training_model.onnx")
            for weight in args.layer or DEFAULT_LAYERS.get(preset, []):
                print(dump_layer(training, weight))


if __name__ == "__main__":
    main()
