"""The LBP rewrite: an ORT training graph in, the same graph with low-rank (WHT) linear backward passes out.

ORT's gradient builder names the backward nodes of a forward node ``F`` ``F_Grad/...``. For a trainable linear
layer on tokens (``MatMul(x, Wt)``, x of shape ``(B, N, C)``) those are a FusedMatMul for ``dx`` and
Reshape(x) + Reshape(dy) + Gemm for ``dWt``; for a 1x1 ``Conv`` it is one ``ConvGrad``. Each such subgraph is
replaced by one ``edge_lbp`` node that reads the projected stash ``x_hat`` instead of ``x``, and a projection node
is inserted after the forward node, so the full activation is no longer kept for the backward pass.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import onnx
from onnx import helper, numpy_helper

from edge_lbp.core import defaults, ops, ort_names
from edge_lbp.core.bases import check_block, parse_selection
from edge_lbp.core.geometry import Geometry, parse_grid
from edge_lbp.core.gradients.static_shapes import concrete_shapes
from edge_lbp.core.wht import Projector
from edge_lbp.export import lbp_functions

MAX_EXTRA_TOKENS = 2  # CLS and distillation: more leading tokens than that are not inferred, only given


@dataclass(frozen=True)
class LbpConfig:
    """Which selection each layer gets (``none`` keeps it exact), and the geometry the user fixes."""

    default: str = defaults.SELECTION
    overrides: Tuple[Tuple[str, str], ...] = ()
    grid: Optional[Tuple[int, int]] = None
    extra_tokens: Optional[int] = None
    block: Union[int, str] = defaults.EXPORT_BLOCK  # a power of two, or "auto" (chosen per layer: auto_block)
    grad_padding: str = "reflect"

    @classmethod
    def parse(cls, lbp: str = defaults.SELECTION, *, grid=None, extra_tokens=None,
              block=defaults.EXPORT_BLOCK) -> "LbpConfig":
        """``"lp-tri:4"`` or ``"lp-tri:4,blocks.0.*=none"``: a default, then ``pattern=spec`` overrides."""
        default, *rest = [part.strip() for part in lbp.split(",")]
        overrides = []
        for item in rest:
            pattern, sep, spec = item.partition("=")
            if not sep or not pattern:
                raise ValueError(f"--lbp override {item!r} is not of the form PATTERN=SPEC (e.g. blocks.0.*=none)")
            overrides.append((pattern.strip(), spec.strip()))
        block = defaults.AUTO if str(block).strip().lower() == defaults.AUTO else check_block(int(block))
        config = cls(default, tuple(overrides), parse_grid(grid) if grid is not None else None,
                     None if extra_tokens is None else int(extra_tokens), block)
        for spec in [default] + [s for _, s in overrides]:
            if spec != "none":
                parse_selection(spec, defaults.BLOCK if block == defaults.AUTO else block)
        return config

    @property
    def spec(self) -> str:
        """The ``--lbp`` spelling of this configuration (the manifest records it)."""
        return ",".join([self.default, *(f"{pattern}={spec}" for pattern, spec in self.overrides)])

    def spec_for(self, weight: str) -> str:
        spec = self.default
        for pattern, override in self.overrides:
            if fnmatch.fnmatchcase(weight, pattern):
                spec = override
        return spec


@dataclass(frozen=True)
class LinearLayer:
    """A trainable linear layer found in the training graph, with the backward nodes that the rewrite replaces."""

    kind: str  # "matmul" (tokens) or "conv" (1x1 on a map)
    node: str  # forward node name
    activation: str  # x
    weight: str  # the parameter
    operand: str  # the forward node's weight input (MatMul: Wt, (Ci, Co); Conv: W)
    grad_output: str  # dy
    grad_nodes: Tuple[str, ...]
    outputs: Tuple[str, ...]  # matmul: (dx, dWt); conv: (dx, dW, db); "" where not needed
    problem: Optional[str] = field(default=None, compare=False)


def _attr(node, name, default=None):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _matmul_layer(fwd, grads, producers) -> Optional[LinearLayer]:
    x, operand = fwd.input[0], fwd.input[1]
    reshape_x = next((n for n in grads if n.op_type == "Reshape" and n.input[0] == x), None)
    gemm = reshape_x and next((n for n in grads if n.op_type == "Gemm" and n.input[0] == reshape_x.output[0]), None)
    if gemm is None:
        return None  # the weight is frozen: nothing to make cheaper here
    reshape_dy = next((n for n in grads if n.op_type == "Reshape" and n.output[0] == gemm.input[1]), None)
    dy = reshape_dy.input[0] if reshape_dy else ""
    dx_node = next((n for n in grads if n.op_type in ("FusedMatMul", "MatMul") and n.input[0] == dy), None)
    transpose = producers.get(operand)
    weight = transpose.input[0] if transpose is not None and transpose.op_type == "Transpose" else operand
    used = {id(n) for n in (reshape_x, gemm, reshape_dy, dx_node) if n is not None}
    problem = None
    if reshape_dy is None or any(id(n) not in used for n in grads):
        problem = "unexpected backward structure: " + ", ".join(f"{n.name} ({n.op_type})" for n in grads)
    return LinearLayer("matmul", fwd.name, x, weight, operand, dy, tuple(n.name for n in grads),
                       (dx_node.output[0] if dx_node else "", gemm.output[0]), problem)


def _conv_layer(fwd, grads) -> Optional[LinearLayer]:
    conv_grad = next((n for n in grads if n.op_type == "ConvGrad"), None)
    if conv_grad is None or not conv_grad.output[1]:
        return None
    outputs = tuple(conv_grad.output) + ("",) * (3 - len(conv_grad.output))
    pointwise = (_attr(fwd, "group", 1) == 1 and set(_attr(fwd, "strides", [1])) == {1}
                 and set(_attr(fwd, "pads", [0])) == {0} and set(_attr(fwd, "dilations", [1])) == {1}
                 and set(_attr(fwd, "kernel_shape", [1])) == {1})
    problem = None if pointwise else "not a 1x1 convolution (stride 1, no padding, one group)"
    if len(grads) != 1:
        problem = "unexpected backward structure: " + ", ".join(f"{n.name} ({n.op_type})" for n in grads)
    return LinearLayer("conv", fwd.name, fwd.input[0], fwd.input[1], fwd.input[1], conv_grad.input[0],
                       (conv_grad.name,), outputs, problem)


def find_linear_layers(model: onnx.ModelProto) -> List[LinearLayer]:
    """Trainable MatMul and Conv layers of a training graph, in forward order."""
    nodes = list(model.graph.node)
    producers = {out: n for n in nodes for out in n.output}
    grads: Dict[str, list] = {}
    for n in nodes:
        if ort_names.forward_node_of(n.name) is not None:
            grads.setdefault(ort_names.forward_node_of(n.name), []).append(n)
    layers = []
    for fwd in nodes:
        if fwd.domain not in ("", "ai.onnx") or fwd.name not in grads:
            continue
        if fwd.op_type == "MatMul":
            layer = _matmul_layer(fwd, grads[fwd.name], producers)
        elif fwd.op_type == "Conv":
            layer = _conv_layer(fwd, grads[fwd.name])
        else:
            layer = None
        if layer is not None:
            layers.append(layer)
    return layers


def activation_shapes(forward_model: onnx.ModelProto, input_shape: Sequence[int], names) -> Dict[str, tuple]:
    """The shapes of the named tensors for a batch of one, without an ONNX Runtime session: ONNX shape inference
    with data propagation (a Reshape's target computed from Shape ops included), and for what it leaves symbolic
    (a side network's reads) one forward pass of onnx's reference evaluator (numpy)."""
    return concrete_shapes(forward_model, (1, *input_shape), names)


def _grid_candidates(tokens: int, image_hw: Tuple[int, int]) -> set:
    """(grid, extra) pairs that explain ``tokens``: image sides divided by a common stride, or a square window."""
    h, w = image_hw
    found = set()
    for extra in range(MAX_EXTRA_TOKENS + 1):
        n = tokens - extra
        side = int(round(n ** 0.5))
        if n > 0 and side * side == n:
            found.add(((side, side), extra))
        for stride in range(1, min(h, w) + 1):
            if h % stride == 0 and w % stride == 0 and (h // stride) * (w // stride) == n:
                found.add(((h // stride, w // stride), extra))
    return found


def layer_geometry(layer: LinearLayer, shape: tuple, image_hw, config: LbpConfig):
    """``((H, W), E)`` for a layer, or a string saying why it stays exact."""
    if layer.kind == "conv":
        if len(shape) != 4:
            return f"input is {len(shape)}-D, expected (B, C, H, W)"
        return (shape[2], shape[3]), 0
    if len(shape) != 3:
        return f"input is {len(shape)}-D: no token grid"
    tokens = shape[1]
    if config.grid is not None:
        gh, gw = config.grid
        extra = tokens - gh * gw if config.extra_tokens is None else config.extra_tokens
        largest = MAX_EXTRA_TOKENS if config.extra_tokens is None else extra
        if 0 <= extra <= largest and extra + gh * gw == tokens:
            return config.grid, extra
    candidates = _grid_candidates(tokens, image_hw)
    if len(candidates) == 1:
        return candidates.pop()
    if not candidates:
        return f"{tokens} tokens fit no grid of the {image_hw[0]}x{image_hw[1]} input: pass --grid and --extra-tokens"
    listed = ", ".join(f"{g[0]}x{g[1]}+{e}" for g, e in sorted(candidates))
    return f"{tokens} tokens are ambiguous ({listed}): pass --grid and --extra-tokens"


def _block_for(grid, block):
    """A grid smaller than the block gets the smallest block that covers it (no padding to a larger block)."""
    cover = 1 << (max(grid) - 1).bit_length()
    return max(2, min(block, cover))


def _rank(spec, block):
    """The selection's rank at this block; infinite when it does not fit (energy:10 in a 2x2 block)."""
    try:
        return parse_selection(spec, block).rank
    except ValueError:
        return float("inf")


def auto_block(grid, spec) -> Tuple[int, str]:
    """``--block auto``: the largest block up to ``defaults.BLOCK`` that cuts the grid into at least
    ``defaults.MIN_BLOCKS`` blocks while the selection still drops bases (rank < k^2); without one, the smallest
    block that still drops bases. Returns the block and the reason, for the export report."""
    h, w = grid
    blocks = lambda k: Geometry(h, w, 0, k).blocks  # noqa: E731
    dropping = [k for k in (defaults.BLOCK >> i for i in range(defaults.BLOCK.bit_length() - 1))
                if _rank(spec, k) < k * k]  # largest first
    if not dropping:
        return _block_for(grid, defaults.BLOCK), f"no block up to {defaults.BLOCK} keeps fewer bases than {spec}"
    chosen = next((k for k in dropping if blocks(k) >= defaults.MIN_BLOCKS), dropping[-1])
    why = f"{blocks(chosen)} blocks per image"
    if chosen != dropping[0]:
        why += f" (k{dropping[0]} would leave {blocks(dropping[0])})"
    elif blocks(chosen) < defaults.MIN_BLOCKS:
        why += f" (a smaller block would keep all bases of {spec})"
    return chosen, why


def plan_layers(layers, shapes, image_hw, config: LbpConfig):
    """One table row per layer, and the projector of each layer to rewrite (None when it stays exact)."""
    rows, projectors = [], []
    for layer in layers:
        row = dict(layer=layer.weight, node=layer.node, kind=layer.kind, status="exact", reason=None, grid=None,
                   extra_tokens=None, block=None, block_reason=None, selection=None, rank=None, tokens=None, rows=None,
                   flop_ratio=None)
        spec, projector = config.spec_for(layer.weight), None
        geometry = layer_geometry(layer, shapes[layer.activation], image_hw, config)
        if layer.problem:
            row["reason"] = layer.problem
        elif spec == "none":
            row["reason"] = "--lbp none"
        elif isinstance(geometry, str):
            row["reason"] = geometry
        else:
            grid, extra = geometry
            if config.block == defaults.AUTO:
                block, row["block_reason"] = auto_block(grid, spec)
            else:
                block = _block_for(grid, config.block)
            projector = Projector.of(grid, extra, block, spec)
            g = projector.geometry
            row.update(status="rewritten", grid=list(grid), extra_tokens=extra, block=g.block,
                       selection=projector.selection.name, rank=projector.rank, tokens=g.tokens,
                       rows=projector.rows, flop_ratio=projector.rows / g.tokens)
        rows.append(row)
        projectors.append(projector)
    unmatched = [p for p, _ in config.overrides if not any(fnmatch.fnmatchcase(l.weight, p) for l in layers)]
    if unmatched:  # a mistyped pattern would otherwise leave every layer at the default without a word
        names = ", ".join(l.weight for l in layers[:3]) + (", ..." if len(layers) > 3 else "")
        raise ValueError(f"--lbp override pattern {unmatched[0]!r} matches no trainable linear layer ({names})")
    if config.grid is not None and not any(r["grid"] == list(config.grid) for r in rows):
        counts = sorted({shapes[l.activation][1] for l in layers if len(shapes[l.activation]) == 3})
        raise ValueError(f"--grid {config.grid[0]}x{config.grid[1]} --extra-tokens {config.extra_tokens} fits no "
                         f"linear layer (their token counts: {', '.join(map(str, counts)) or 'none'})")
    return rows, projectors


def _operator_key(projector: Projector, padding: str) -> str:
    g = projector.geometry
    name = re.sub(r"[^A-Za-z0-9]+", "_", projector.selection.name)
    return f"edge_lbp.g{g.height}x{g.width}_e{g.extra}_k{g.block}_{name}_{padding}"


def rewrite(model: onnx.ModelProto, layers: Sequence[LinearLayer], projectors, grad_padding="reflect"):
    """Replace the backward subgraph of each layer that has a projector; return a new ModelProto."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = list(graph.node)
    constants = {}
    for layer, projector in zip(layers, projectors):
        if projector is None:
            continue
        key = _operator_key(projector, grad_padding)
        if key not in constants:
            constants[key] = ops.dense_operators(projector, grad_padding)
        attrs = ops.node_attributes(projector, grad_padding)
        stash = f"{layer.node}/wht_stash"
        project_op = ops.PROJECT if layer.kind == "matmul" else ops.PROJECT_MAP
        forward_at = next(i for i, n in enumerate(nodes) if n.name == layer.node) + 1
        nodes.insert(forward_at, helper.make_node(project_op, [layer.activation, f"{key}.projection"], [stash],
                                                  name=f"{layer.node}/WHTProject", domain=ops.DOMAIN, **attrs))
        replaced = set(layer.grad_nodes)
        backward_at = min(i for i, n in enumerate(nodes) if n.name in replaced)
        outputs = [o or ops.unused_output(layer.node, i) for i, o in enumerate(layer.outputs)]
        grad_op = ops.MATMUL_GRAD if layer.kind == "matmul" else ops.CONV_GRAD
        grad_node = helper.make_node(grad_op, [stash, layer.grad_output, layer.operand, f"{key}.grad_projection",
                                               f"{key}.reconstruction"], outputs,
                                     name=f"{layer.node}{ort_names.GRAD_SCOPE}{grad_op}", domain=ops.DOMAIN, **attrs)
        nodes = [n for n in nodes if n.name not in replaced]
        nodes.insert(backward_at, grad_node)
    del graph.node[:]
    graph.node.extend(nodes)
    for key, mats in constants.items():
        graph.initializer.extend(numpy_helper.from_array(m, f"{key}.{name}") for name, m in mats.items())
    if constants:
        _declare_domain(out)
    return drop_unused_initializers(out)


def _declare_domain(model):
    if not any(o.domain == ops.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ops.DOMAIN, ops.OPSET))
    declared = {(f.domain, f.name) for f in model.functions}
    model.functions.extend(f for f in lbp_functions.all_functions() if (f.domain, f.name) not in declared)


def drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove initializers that no node reads any more (e.g. the Reshape shapes of a replaced subgraph)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) == len(model.graph.initializer):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out


def apply_lbp(training_model, forward_model, input_shape, config: LbpConfig):
    """The whole pass: find layers, infer their geometry, rewrite. Returns ``(model, table)``."""
    layers = find_linear_layers(training_model)
    shapes = activation_shapes(forward_model, input_shape, sorted({l.activation for l in layers}))
    missing = [l.activation for l in layers if l.activation not in shapes]
    if missing:
        raise ValueError(f"activations {missing} of the training graph have no static shape in the forward graph "
                         "(ONNX shape inference)")
    # An image's (H, W) bounds the grids a token count can come from; a token input's (N, C) says nothing about
    # them, so its given grid stands in (a layer on a merged grid then finds its divisions of it).
    image_hw = config.grid if len(input_shape) == 2 else tuple(input_shape[-2:])
    table, projectors = plan_layers(layers, shapes, image_hw, config)
    return rewrite(training_model, layers, projectors, config.grad_padding), table
