"""The op registry: ``(domain, op_type)`` -> a kernel factory, one small function per op.

A factory runs once per node when a graph is loaded: it reads the node's attributes (already decoded into plain
Python values) and returns the callable the engine invokes on every step. Anything that depends only on the
node belongs in the factory, so the per-step call does array work and nothing else::

    @register("Softmax")
    def softmax(attrs, node):
        axis = attrs.get("axis", -1)
        return lambda x: (_softmax(x, axis),)

The callable takes the node's inputs in order (``None`` for an omitted optional input) and returns a tuple with
one entry per node output. A factory registered with ``random=True`` also takes ``stream=``, the graph's
``kernels.stochastic.RandomStream`` it draws from; one registered with ``adaptive=True`` takes ``bases=``, the
graph's ``edge_lbp.core.energy.AdaptiveBases`` (the ``energy:r`` layers' state).
"""
from typing import Callable, Dict, List, Optional, Tuple

import onnx
from onnx import helper

from edge_lbp.core import ops
from edge_lbp.core.ops import STANDARD_DOMAINS

STANDARD_DOMAIN = ""  # how the registry spells ai.onnx
Factory = Callable[[dict, onnx.NodeProto], Callable[..., tuple]]
_KERNELS: Dict[Tuple[str, str], Factory] = {}
_RANDOM = set()  # the keys of factories that take the graph's random stream
_ADAPTIVE = set()  # the keys of factories that take the graph's adaptive bases
# The opset versions whose semantics the kernels implement, per domain: axes as inputs (Squeeze, Unsqueeze,
# ReduceSum) from 13; Split's num_outputs and ReduceMean's axes input from 18 (both forms are handled).
OPSETS = {"": range(13, 19), ops.MICROSOFT: range(1, 2), ops.DOMAIN: range(ops.OPSET, ops.OPSET + 1)}


def _domain(domain: str) -> str:
    return STANDARD_DOMAIN if domain in STANDARD_DOMAINS else domain


def register(op_type: str, domain: str = "", random: bool = False, adaptive: bool = False):
    def add(factory: Factory) -> Factory:
        key = (_domain(domain), op_type)
        if key in _KERNELS:
            raise RuntimeError(f"two kernels registered for {domain or 'ai.onnx'}::{op_type}")
        _KERNELS[key] = factory
        if random:
            _RANDOM.add(key)
        if adaptive:
            _ADAPTIVE.add(key)
        return factory

    return add


def lookup(domain: str, op_type: str) -> Optional[Factory]:
    return _KERNELS.get((_domain(domain), op_type))


def build(node: onnx.NodeProto, stream=None, bases=None) -> Callable[..., tuple]:
    """The node's kernel; ``stream`` is the random stream handed to the factories registered ``random=True``,
    ``bases`` the adaptive bases handed to those registered ``adaptive=True``."""
    key = (_domain(node.domain), node.op_type)
    extra = {**({"stream": stream} if key in _RANDOM else {}), **({"bases": bases} if key in _ADAPTIVE else {})}
    return _KERNELS[key](attributes(node), node, **extra)


def supported() -> List[Tuple[str, str]]:
    """Every registered ``(domain, op_type)``, sorted, the standard domain spelled ``ai.onnx``."""
    return sorted((domain or "ai.onnx", op) for domain, op in _KERNELS)


def opset_problems(model: onnx.ModelProto) -> List[str]:
    """The opset imports of the domains the graph's nodes use that the kernels do not implement."""
    used = {_domain(node.domain) for node in model.graph.node}
    problems = []
    for opset in model.opset_import:
        domain = _domain(opset.domain)
        supported = OPSETS.get(domain)
        if domain in used and supported is not None and opset.version not in supported:
            problems.append(f"opset {domain or 'ai.onnx'} {opset.version} (the kernels implement "
                            f"{supported.start}..{supported.stop - 1})")
    return problems


def attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes as plain values (strings decoded, tensors as numpy arrays)."""
    from onnx import numpy_helper

    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out
