"""The gradient rules, one per forward op: the one place a newcomer adds an op's gradient.

A rule is a function ``rule(g)`` registered with ``@rule(op_type, domain, inputs=...)``; ``g`` is the node's
:class:`edge_lbp.core.gradients.builder.NodeGradient` (the forward node, the gradients of its outputs, and
``emit`` for the backward nodes). ``inputs`` lists the input positions that carry a gradient (a Reshape's shape
or a Slice's bounds do not; ``None``: every input, as for Concat); the rule must ``g.set`` the gradient of each
of them that ``g.wants``. Ops whose outputs carry no gradient at all (shape arithmetic, comparisons, constants)
are listed with ``no_gradient``. A rule names ops of the numba engine only (standard ONNX or its
``com.microsoft`` training kernels).
"""


class GradientError(ValueError):
    """The builder cannot differentiate the graph; the message names the node and its op."""


_RULES = {}
_NONE = object()  # marks an op registered with no_gradient


def _key(op_type, domain):
    return (domain or "ai.onnx", op_type)


def rule(op_type, domain="", inputs=(0,)):
    def wrap(fn):
        key = _key(op_type, domain)
        if key in _RULES:
            raise ValueError(f"gradient rule for {key[0]}::{op_type} registered twice")
        _RULES[key] = (fn, None if inputs is None else tuple(inputs))
        return fn

    return wrap


def no_gradient(*op_types):
    for op_type in op_types:
        _RULES[_key(op_type, "")] = _NONE


def lookup(node):
    """``(rule, differentiable input positions)``, ``None`` for an op without gradient, or raise GradientError."""
    found = _RULES.get(_key(node.op_type, node.domain))
    if found is None:
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        raise GradientError(f"no gradient rule for node {node.name!r} (op {op}); it cannot be trained through")
    if found is _NONE:
        return None
    fn, inputs = found
    return fn, range(len(node.input)) if inputs is None else inputs


def has_rule(node):
    return _key(node.op_type, node.domain) in _RULES


def ruled_ops():
    """The op types that have a rule (not those listed with ``no_gradient``)."""
    return {op for (_, op), found in _RULES.items() if found is not _NONE}
