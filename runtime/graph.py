"""Executes one ONNX graph node by node with the registered kernels.

Everything that depends only on the graph happens in the constructor: kernels are built (so an unsupported op or
dtype fails at load time, listing every offending node), values get integer slots, and each node learns which
slots die after it, so intermediates are released at their last use. ``run`` is then a short loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from edge_lbp.runtime import registry

SUPPORTED_TENSOR_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32,
                          onnx.TensorProto.BOOL}


def _stop_inside(err):
    """The stop signal's exception (a ``KeyboardInterrupt``) that ``err`` wraps, or None. A stop signal's handler
    that runs while a parallel Numba kernel returns reaches us as a chain of SystemErrors ("returned a result with an
    exception set", one per native layer) caused by it: seen in about a third of SIGTERMs during a step."""
    while isinstance(err, SystemError):
        err = err.__cause__ or err.__context__
    return err if isinstance(err, KeyboardInterrupt) else None


class UnsupportedGraph(ValueError):
    """The graph has ops or dtypes the engine cannot run; the message lists every such node."""


@dataclass(frozen=True)
class Step:
    name: str
    op_type: str
    run: Callable[..., tuple]
    inputs: Tuple[int, ...]  # slot per input, -1 for an omitted optional input
    outputs: Tuple[int, ...]  # slot per output, -1 for an omitted optional output
    release: Tuple[int, ...]  # slots whose last reader is this step


def _elem_type(value_info: onnx.ValueInfoProto) -> Optional[int]:
    t = value_info.type
    if t.HasField("tensor_type"):
        return t.tensor_type.elem_type
    if t.HasField("sequence_type") and t.sequence_type.elem_type.HasField("tensor_type"):
        return t.sequence_type.elem_type.tensor_type.elem_type
    return None


def _dims(value_info: onnx.ValueInfoProto) -> Optional[tuple]:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim)


def mismatched_shapes(graph: "Graph", values: Mapping[str, np.ndarray]) -> List[str]:
    """The values whose shapes disagree with what ``graph`` declares for the input of that name."""
    problems = []
    for name, value in values.items():
        dims = graph.feed_shapes.get(name)
        if dims is not None and (len(dims) != value.ndim
                                 or any(d is not None and d != n for d, n in zip(dims, value.shape))):
            shown = tuple("?" if d is None else d for d in dims)
            problems.append(f"{name} has shape {tuple(value.shape)}, the {graph.name} takes {shown}")
    return problems


def _check_types(graph: onnx.GraphProto) -> List[str]:
    problems = []
    for kind, items in (("input", graph.input), ("output", graph.output)):
        for vi in items:
            elem = _elem_type(vi)
            if elem is not None and elem not in SUPPORTED_TENSOR_TYPES:
                problems.append(f"graph {kind} {vi.name!r}: dtype {onnx.TensorProto.DataType.Name(elem)}")
    for t in graph.initializer:
        if t.data_type not in SUPPORTED_TENSOR_TYPES:
            problems.append(f"initializer {t.name!r}: dtype {onnx.TensorProto.DataType.Name(t.data_type)}")
    return problems


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


class LiveBytes:
    """Peak bytes held at once by a run's intermediates: the memory kernels allocated, counted once per buffer
    (a view counts its base when that base is new: kernels return reshaped or transposed views of fresh arrays)
    and never for feeds and constants, which the caller owns."""

    def __init__(self):
        self.live = self.peak = 0
        self.history: List[int] = []  # bytes held right after each step, before its releases
        self._roots: Dict[int, list] = {}  # id(base) -> [base, slots holding it, first slot]
        self._slot_root: Dict[int, int] = {}
        self._external = None

    def count(self, step: Step, values, feeds, constants) -> None:
        if self._external is None:
            self._external = {id(_root(v)) for v in (*feeds.values(), *constants.values())
                              if isinstance(v, np.ndarray)}
        for slot in step.outputs:
            value = values[slot] if slot >= 0 else None
            if not isinstance(value, np.ndarray) or slot in self._slot_root:
                continue
            root = _root(value)
            if id(root) in self._external:
                continue
            held = self._roots.setdefault(id(root), [root, set(), slot])
            if not held[1]:
                self.live += root.nbytes
            held[1].add(slot)
            self._slot_root[slot] = id(root)
        self.peak = max(self.peak, self.live)
        self.history.append(self.live)
        for slot in step.release:
            key = self._slot_root.pop(slot, None)
            if key is not None:
                root, slots, _ = self._roots[key]
                slots.discard(slot)
                if not slots:
                    self.live -= root.nbytes
                    del self._roots[key]

    def held(self):
        """``(first slot, bytes)`` of every buffer held now (the slot that first held it: its producer's output)."""
        return [(first, root.nbytes) for root, _, first in self._roots.values()]


class Graph:
    """A loaded graph. ``feeds`` names the inputs a caller must give (those a node reads); ``constants`` holds the
    initializers."""

    def __init__(self, model: onnx.ModelProto, *, name: str = "graph", random=None, bases=None):
        """``random``: the ``kernels.stochastic.RandomStream`` the graph's random kernels draw from (default: one
        seeded with 0); ``bases``: the ``edge_lbp.core.energy.AdaptiveBases`` of its ``energy:r`` layers (default: a
        fresh one)."""
        import edge_lbp.runtime.kernels  # noqa: F401  (registers every kernel)
        from edge_lbp.core.energy import AdaptiveBases
        from edge_lbp.runtime.kernels.stochastic import RandomStream

        graph = model.graph
        self.name = name
        self.random = random if random is not None else RandomStream(0)
        self.bases = bases if bases is not None else AdaptiveBases()
        self.constants: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        # An input no node reads is not asked for: ORT's SGD optimizer graph declares first_order_moments and never
        # reads them, and a caller would allocate a parameter-sized buffer for nothing (330 MB on ViT-B/16).
        read = {name for node in graph.node for name in node.input} | {vi.name for vi in graph.output}
        self.feeds = [vi.name for vi in graph.input if vi.name not in self.constants and vi.name in read]
        # Declared input shapes (None for a symbolic dimension), to check what a caller binds before a step runs.
        self.feed_shapes = {vi.name: _dims(vi) for vi in graph.input if vi.name not in self.constants}
        self.output_names = [vi.name for vi in graph.output]
        self._slots: Dict[str, int] = {}
        for tensor in list(self.constants) + self.feeds:
            self._slot(tensor)

        steps, problems, no_kernel = [], registry.opset_problems(model) + _check_types(graph), {}
        for node in graph.node:
            op = f"{node.domain or 'ai.onnx'}::{node.op_type}"
            if registry.lookup(node.domain, node.op_type) is None:
                no_kernel.setdefault(op, []).append(node.name or "(unnamed)")
                continue
            try:
                steps.append((node, registry.build(node, self.random, self.bases)))
            except ValueError as err:
                problems.append(f"node {node.name} ({op}): {err}")
        for op, nodes in sorted(no_kernel.items()):
            shown = ", ".join(nodes[:3]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > 3 else "")
            problems.append(f"no kernel for {op} ({shown})")
        if problems:
            raise UnsupportedGraph(f"{name}: the engine cannot run this graph: " + "; ".join(problems))
        self.steps = self._plan(steps)

    def _slot(self, tensor: str) -> int:
        return self._slots.setdefault(tensor, len(self._slots))

    def _plan(self, steps) -> List[Step]:
        wired = []
        for node, run in steps:
            ins = tuple(self._slot(i) if i else -1 for i in node.input)
            outs = tuple(self._slot(o) if o else -1 for o in node.output)
            wired.append((node, run, ins, outs))
        keep = {self._slots[o] for o in self.output_names if o in self._slots}
        last_use: Dict[int, int] = {}
        for index, (_, _, ins, outs) in enumerate(wired):
            for slot in ins + outs:  # an output nobody reads dies right after the step that made it
                if slot >= 0:
                    last_use[slot] = index
        dying: Dict[int, list] = {}
        for slot, index in last_use.items():
            if slot not in keep:
                dying.setdefault(index, []).append(slot)
        return [Step(node.name, node.op_type, run, ins, outs, tuple(dying.get(i, ())))
                for i, (node, run, ins, outs) in enumerate(wired)]

    def run(self, feeds: Mapping[str, object], trace: Optional[list] = None,
            hooks: Optional[Mapping[int, Callable[[], None]]] = None, meter: Optional["LiveBytes"] = None) -> list:
        """Execute the graph and return its outputs in order (to read an intermediate, make it a graph output).

        ``trace``, when given, receives ``(op_type, node name, start, end)`` per step (``time.perf_counter``);
        ``hooks`` maps a step index to a callable run just before that step (the profiler's phase boundary);
        ``meter`` counts the bytes the intermediates hold (the memory guard's probe).
        """
        missing = [f for f in self.feeds if f not in feeds]
        if missing:
            raise ValueError(f"{self.name}: missing inputs {missing}")
        values: List[object] = [None] * len(self._slots)
        for tensor, value in self.constants.items():
            values[self._slots[tensor]] = value
        for tensor in self.feeds:
            values[self._slots[tensor]] = feeds[tensor]
        with np.errstate(all="ignore"):  # NaN and overflow are the divergence guard's to report, once per step
            return self._run(values, feeds, trace, hooks, meter)

    def _run(self, values, feeds, trace, hooks, meter) -> list:
        for index, step in enumerate(self.steps):
            if hooks and index in hooks:
                hooks[index]()
            start = time.perf_counter() if trace is not None else 0.0
            try:
                results = step.run(*[values[i] if i >= 0 else None for i in step.inputs])
            except Exception as err:
                stop = _stop_inside(err)
                if stop is not None:
                    raise stop from None
                raise RuntimeError(f"{self.name}: node {step.name} ({step.op_type}) failed: "
                                   f"{type(err).__name__}: {err}") from err
            for slot, value in zip(step.outputs, results):
                if slot >= 0:
                    values[slot] = value
            if meter is not None:
                meter.count(step, values, feeds, self.constants)
            for slot in step.release:
                values[slot] = None
            if trace is not None:
                trace.append((step.op_type, step.name, start, time.perf_counter()))
        return [values[self._slots[o]] for o in self.output_names]
