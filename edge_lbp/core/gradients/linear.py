"""Gradient rules of the products: MatMul and Gemm."""
from edge_lbp.core.gradients.registry import rule
from edge_lbp.core.ops import MICROSOFT as MS


@rule("MatMul", inputs=(0, 1))
def matmul(g):
    """``Y = A @ B`` (numpy rules): ``dA = dY @ B^T``, ``dB = A^T @ dY``, each summed over the batch axes its
    operand was broadcast along. A weight (2-D ``B`` under a batched ``A``) gets one 2-D product over the
    flattened rows, a Gemm, instead of a per-batch product and a sum."""
    a, b, dy = g.x(0), g.x(1), g.dy()
    sa, sb, sy = g.shape(a), g.shape(b), g.shape(g.y())
    if len(sa) < 2 or len(sb) < 2:
        raise g.error("a 1-D operand is not supported")
    if g.wants(0):
        full = g.emit("FusedMatMul", [dy, b], domain=MS, transB=1)[0]
        g.set(0, g.reduce_to(full, sy[:-2] + tuple(sa[-2:]), 0))
    if g.wants(1):
        if len(sb) == 2 and len(sa) > 2:
            k, n = sb  # the weight's shape is static where the activation's may not be
            if not isinstance(k, int) or not isinstance(n, int):
                raise g.error("the weight product needs static inner dimensions")
            rows_a = g.emit("Reshape", [a, g.const("a_rows", [-1, k])])[0]
            rows_dy = g.emit("Reshape", [dy, g.const("dy_rows", [-1, n])])[0]
            g.set(1, g.emit("Gemm", [rows_a, rows_dy], transA=1)[0])
        elif len(sa) == 2 and len(sb) == 2:
            g.set(1, g.emit("Gemm", [a, dy], transA=1)[0])
        else:
            full = g.emit("FusedMatMul", [a, dy], domain=MS, transA=1)[0]
            g.set(1, g.reduce_to(full, sy[:-2] + tuple(sb[-2:]), 1))


@rule("Gemm", inputs=(0, 1, 2))
def gemm(g):
    """``Y = alpha op(A) op(B) + beta C``: ``d op(A) = alpha dY op(B)^T`` and ``d op(B) = alpha op(A)^T dY``, each
    written as one Gemm in ``A``'s (``B``'s) own orientation; ``dC = beta dY`` summed to ``C``'s shape."""
    a, b, dy = g.x(0), g.x(1), g.dy()
    ta, tb, alpha = g.attrs.get("transA", 0), g.attrs.get("transB", 0), g.attrs.get("alpha", 1.0)
    if g.wants(0):
        pair = ([dy, b], dict(transA=0, transB=1 - tb)) if not ta else ([b, dy], dict(transA=tb, transB=1))
        g.set(0, g.emit("Gemm", pair[0], alpha=alpha, **pair[1])[0])
    if g.wants(1):
        pair = ([a, dy], dict(transA=1 - ta, transB=0)) if not tb else ([dy, a], dict(transA=1, transB=ta))
        g.set(1, g.emit("Gemm", pair[0], alpha=alpha, **pair[1])[0])
    if g.wants(2):
        dc = g.reduce_to(dy, g.shape(g.y()), 2)
        beta = g.attrs.get("beta", 1.0)
        if beta != 1.0:
            dc = g.emit("Mul", [dc, g.const("beta", beta, "float32")])[0]
        g.set(2, dc)


@rule("Conv", inputs=(0, 1, 2))
def conv(g):
    """``ConvGrad(dY, X, W)`` gives ``dX``, ``dW``, ``dB`` with the forward's geometry; an output nobody wants
    is left unnamed so the kernel skips it."""
    outputs = [f"{g.node.name}_Grad/d{i}" if g.wants(i) else "" for i in range(len(g.node.input))]
    grads = g.emit("ConvGrad", [g.dy(), g.x(0), g.x(1)], domain=MS, outputs=outputs, **g.attrs)
    for i, grad in enumerate(grads):
        if g.wants(i):
            g.set(i, grad)
