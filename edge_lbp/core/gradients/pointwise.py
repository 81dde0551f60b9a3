"""Gradient rules of the element-wise ops, the activations and the normalisations.

A unary op's derivative is written from its output where that is cheaper (Tanh, Sqrt, Exp), as ORT writes it.

A binary op broadcasts its inputs to the output's shape; each input's gradient is summed back over the axes it
was broadcast along (``NodeGradient.reduce_to``).
"""
import math

from edge_lbp.core.gradients.forward import dropout_is_identity
from edge_lbp.core.gradients.registry import rule
from edge_lbp.core.ops import MICROSOFT as MS


def _binary(g, parts):
    """Set input i's gradient to ``parts[i]()`` reduced to its shape, for the inputs that want one."""
    full = g.shape(g.y())
    for i in (0, 1):
        if g.wants(i):
            g.set(i, g.reduce_to(parts[i](), full, i))


@rule("Add", inputs=(0, 1))
def add(g):
    _binary(g, (g.dy, g.dy))


@rule("Sub", inputs=(0, 1))
def sub(g):
    _binary(g, (g.dy, lambda: g.emit("Neg", [g.dy()])[0]))


@rule("Mul", inputs=(0, 1))
def mul(g):
    _binary(g, (lambda: g.emit("Mul", [g.dy(), g.x(1)])[0], lambda: g.emit("Mul", [g.dy(), g.x(0)])[0]))


@rule("Div", inputs=(0, 1))
def div(g):
    """``Y = A / B``: ``dA = dY / B``, ``dB = -dY A / B^2 = -(dY / B) Y``."""
    quotient = g.emit("Div", [g.dy(), g.x(1)])[0]
    _binary(g, (lambda: quotient,
                lambda: g.emit("Neg", [g.emit("Mul", [quotient, g.y()])[0]])[0]))


@rule("Pow", inputs=(0, 1))
def pow_(g):
    """``Y = A^B``: ``dA = dY B A^(B-1)`` (B cast to A's type: ONNX lets an exponent be an integer), ``dB = dY Y
    ln A``."""
    def base():
        exponent = g.emit("Cast", [g.x(1)], to=g.elem_type(g.x(0)))[0]
        lower = g.emit("Pow", [g.x(0), g.emit("Sub", [exponent, g.const("one", 1.0, "float32")])[0]])[0]
        return g.emit("Mul", [g.dy(), g.emit("Mul", [exponent, lower])[0]])[0]

    def power():
        return g.emit("Mul", [g.emit("Mul", [g.dy(), g.y()])[0], g.emit("Log", [g.x(0)])[0]])[0]

    _binary(g, (base, power))


@rule("Sqrt")
def sqrt(g):
    """``dX = dY / (2 Y)``."""
    g.set(0, g.emit("Mul", [g.emit("Div", [g.dy(), g.y()])[0], g.const("half", 0.5, "float32")])[0])


@rule("Exp")
def exp(g):
    g.set(0, g.emit("Mul", [g.dy(), g.y()])[0])


@rule("Erf")
def erf(g):
    """``dX = dY 2/sqrt(pi) exp(-X^2)`` (an erf-form GELU never gets here: ``forward.fuse_gelu``)."""
    gauss = g.emit("Exp", [g.emit("Neg", [g.emit("Mul", [g.x(0), g.x(0)])[0]])[0]])[0]
    slope = g.emit("Mul", [gauss, g.const("two_over_sqrt_pi", 2 / math.sqrt(math.pi), "float32")])[0]
    g.set(0, g.emit("Mul", [g.dy(), slope])[0])


@rule("Tanh")
def tanh(g):
    g.set(0, g.emit("TanhGrad", [g.dy(), g.y()], domain=MS)[0])


@rule("Neg")
def neg(g):
    g.set(0, g.emit("Neg", [g.dy()])[0])


@rule("Identity")
def identity(g):
    g.set(0, g.dy())


@rule("Dropout")
def dropout(g):
    """The identity where nothing can drop; else ``dY * mask / (1 - ratio)`` (``DropoutGrad`` reads the mask the
    forward outputs: ``forward.mask_dropout``)."""
    if dropout_is_identity(g.node, g.values):
        g.set(0, g.dy())
        return
    g.set(0, g.emit("DropoutGrad", [g.dy(), *g.node.output[1:2], *g.node.input[1:3]], domain=MS)[0])


@rule("Cast")
def cast(g):
    """The gradient cast back to the input's type (only a float input carries one)."""
    g.set(0, g.emit("Cast", [g.dy()], to=g.elem_type(g.x(0)))[0])


@rule("Where", inputs=(1, 2))
def where(g):
    """The gradient goes to the branch each element was taken from."""
    zero = g.const("zero", 0.0, "float32")
    full = g.shape(g.y())
    for i, branches in ((1, [g.dy(), zero]), (2, [zero, g.dy()])):
        if g.wants(i):
            g.set(i, g.reduce_to(g.emit("Where", [g.x(0), *branches])[0], full, i))


@rule("Relu")
def relu(g):
    g.set(0, g.emit("ReluGrad", [g.dy(), g.y()], domain=MS)[0])


@rule("Gelu", MS)
def gelu(g):
    g.set(0, g.emit("GeluGrad", [g.dy(), g.x(0)], domain=MS)[0])


@rule("BiasGelu", MS, inputs=(0, 1))
def bias_gelu(g):
    """``Y = gelu(X + b)``: ``dX = BiasGeluGrad_dX(dY, X, b)``, ``db`` its sum over every axis but the last."""
    dx = g.emit("BiasGeluGrad_dX", [g.dy(), g.x(0), g.x(1)], domain=MS)[0]
    if g.wants(0):
        g.set(0, dx)
    if g.wants(1):
        g.set(1, g.reduce_to(dx, g.shape(g.x(0)), 1))


@rule("Softmax")
def softmax(g):
    g.set(0, g.emit("SoftmaxGrad_13", [g.dy(), g.y()], domain=MS, axis=g.attrs.get("axis", -1))[0])


@rule("LayerNormalization", inputs=(0, 1, 2))
def layer_normalization(g):
    """``LayerNormalizationGrad`` reads the forward's saved mean and inverse standard deviation (outputs 1, 2,
    which torch's training-mode export writes)."""
    if len(g.node.output) < 3 or not all(g.node.output[1:3]):
        raise g.error("the mean and inverse standard deviation outputs are missing")
    grads = g.emit("LayerNormalizationGrad", [g.dy(), g.x(0), g.x(1), g.y(1), g.y(2)], n_out=3, domain=MS,
                   axis=g.attrs.get("axis", -1), epsilon=g.attrs.get("epsilon", 1e-5))
    for i in (0, 1, 2):
        if g.wants(i):
            g.set(i, grads[i])


@rule("BatchNormInternal", MS, inputs=(0, 1, 2))
def batch_norm_internal(g):
    """Training-mode batch normalisation (``forward.stash_batchnorm``): the gradient reads the saved batch
    statistics (outputs 3, 4); the running statistics carry none."""
    grads = g.emit("BatchNormalizationGrad", [g.dy(), g.x(0), g.x(1), g.y(3), g.y(4)], n_out=3, domain=MS,
                   epsilon=g.attrs.get("epsilon", 1e-5))
    for i in (0, 1, 2):
        if g.wants(i):
            g.set(i, grads[i])
