"""Training-mode randomness: Dropout (and ORT's DropoutGrad), RandomUniformLike (drop-path).

The ONNX semantics: Dropout keeps an element where a uniform draw in [0, 1) is at least ``ratio`` and scales the
kept ones by 1 / (1 - ratio); its optional mask output is that boolean keep-mask. Outside training mode (the
default) or at ratio 0 it is the identity with an all-true mask. RandomUniformLike draws in [low, high).

The draws come from the graph's :class:`RandomStream`, which the session reseeds before every pass from its
``seed``, the optimizer step and the pass within the step (see ``NumbaSession.forward_backward``): a run is
reproducible from the seed, and a resumed run draws what the uninterrupted one would have. ONNX Runtime has its
own generator, so the two engines drop different elements; they agree exactly where nothing is dropped. A node
with a ``seed`` attribute draws from its own generator, seeded once from it, as ONNX asks.
"""
import numpy as np
from onnx import helper

from edge_lbp.runtime.kernels.common import MS
from edge_lbp.runtime.registry import register


class RandomStream:
    """The generator the random kernels of one graph draw from; ``reseed`` replaces it."""

    def __init__(self, *key: int):
        self.reseed(*key)

    def reseed(self, *key: int) -> None:
        self.generator = np.random.default_rng([int(k) for k in key] or None)


def _source(attrs, stream):
    if "seed" in attrs:
        # ONNX's seed is a float; its bit pattern keeps distinct seeds (0.5, 1.5) distinct as an integer key.
        return RandomStream(int(np.float32(attrs["seed"]).view(np.uint32)))
    return stream if stream is not None else RandomStream(0)


def _training(training_mode):
    return training_mode is not None and bool(training_mode.reshape(-1)[0])


def _ratio(node, ratio):
    r = 0.5 if ratio is None else float(ratio.reshape(-1)[0])
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{node.name}: Dropout ratio {r} is outside [0, 1)")
    return r


@register("Dropout", random=True)
def dropout(attrs, node, stream=None):
    source = _source(attrs, stream)

    def run(x, ratio=None, training_mode=None):
        r = _ratio(node, ratio)
        if not _training(training_mode) or r == 0.0:
            return x, np.ones(x.shape, dtype=np.bool_)
        keep = source.generator.random(x.shape, dtype=np.float32) >= np.float32(r)
        return np.asarray(x * keep * np.asarray(1.0 / (1.0 - r), dtype=x.dtype)), keep

    return run


@register("DropoutGrad", MS)
def dropout_grad(attrs, node):
    """Inputs (dY, mask, ratio, training_mode) -> dX = dY * mask / (1 - ratio).

    As in ORT, training_mode is not read: the mask carries it (ORT only differentiates training-mode Dropout)."""

    def run(dy, mask, ratio=None, training_mode=None):
        scale = np.asarray(1.0 / (1.0 - _ratio(node, ratio)), dtype=dy.dtype)
        return (np.asarray(dy * mask * scale),)

    return run


@register("RandomUniformLike", random=True)
def random_uniform_like(attrs, node, stream=None):
    source = _source(attrs, stream)
    low, high = attrs.get("low", 0.0), attrs.get("high", 1.0)
    dtype = None if "dtype" not in attrs else np.dtype(helper.tensor_dtype_to_np_dtype(attrs["dtype"]))
    if dtype is not None and dtype.kind != "f":
        raise ValueError(f"{node.name}: RandomUniformLike dtype {dtype} is not a floating-point type")

    def run(x):
        out = dtype or (x.dtype if x.dtype.kind == "f" else np.dtype(np.float32))
        draw = source.generator.random(x.shape, dtype=np.float64 if out == np.float64 else np.float32)
        return (np.asarray(low + draw * (high - low), dtype=out),)

    return run
