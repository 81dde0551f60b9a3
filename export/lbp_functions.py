"""Model-local ONNX functions for the ``edge_lbp`` ops, written with standard ONNX ops only.

The dense operators (projection and gradient projection ``(R, N)``, reconstruction ``(N, R)``) come in as inputs,
so each body is a short chain of products that ONNX Runtime (or any runtime) can execute. The geometry attributes
are declared for the device engine, which runs the fused kernels instead of these bodies.
"""
import onnx
from onnx import helper

from edge_lbp.core import ops

BODY_OPSET = 17
ATTRIBUTES = ["grid", "extra_tokens", "block", "pairs", "selection", "grad_padding"]


def _node(op_type, inputs, output, **attrs):
    return helper.make_node(op_type, inputs, [output], **attrs)


def _int64s(name, values):
    return _node("Constant", [], name, value=helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], values))


def _tokens_from_map(src, dst):
    """(B, C, H, W) -> (B, H*W, C)."""
    return [_int64s(f"{dst}_shape", [0, 0, -1]),
            _node("Reshape", [src, f"{dst}_shape"], f"{dst}_bcn"),
            _node("Transpose", [f"{dst}_bcn"], dst, perm=[0, 2, 1])]


def _function(op_type, inputs, outputs, nodes):
    return helper.make_function(ops.DOMAIN, op_type, inputs, outputs, nodes,
                                opset_imports=[helper.make_opsetid("", BODY_OPSET)], attributes=ATTRIBUTES)


def project_tokens():
    """x (B, N, C), projection (R, N) -> x_hat (B, R, C)."""
    return _function(ops.PROJECT, ["x", "projection"], ["x_hat"], [_node("MatMul", ["projection", "x"], "x_hat")])


def project_map():
    """x (B, C, H, W), projection (R, H*W) -> x_hat (B, R, C)."""
    return _function(ops.PROJECT_MAP, ["x", "projection"], ["x_hat"],
                     _tokens_from_map("x", "x_tokens") + [_node("MatMul", ["projection", "x_tokens"], "x_hat")])


def _projected_gradient(dy_tokens):
    """g = Pg @ dy (B, R, Co) and the flattened rows of g and x_hat for the weight-gradient product."""
    return [_node("MatMul", ["grad_projection", dy_tokens], "g"),
            _node("Flatten", ["g"], "g_rows", axis=2),
            _node("Flatten", ["x_hat"], "x_rows", axis=2)]


def matmul_grad():
    """Backward of ``y = MatMul(a, b)``, ``b: (Ci, Co)``: ``da = Rc @ (g @ b^T)``, ``db = x_hat^T g``."""
    nodes = _projected_gradient("dy") + [
        _node("Gemm", ["x_rows", "g_rows"], "db", transA=1),
        _node("Transpose", ["b"], "b_t", perm=[1, 0]),
        _node("MatMul", ["g", "b_t"], "da_rows"),
        _node("MatMul", ["reconstruction", "da_rows"], "da"),
    ]
    return _function(ops.MATMUL_GRAD, ["x_hat", "dy", "b", "grad_projection", "reconstruction"], ["da", "db"], nodes)


def conv_grad():
    """Backward of a 1x1 ``Conv`` with ``w: (Co, Ci, 1, 1)`` on ``(B, C, H, W)``: ``dx``, ``dw``, ``db``."""
    nodes = _tokens_from_map("dy", "dy_tokens") + _projected_gradient("dy_tokens") + [
        _node("Gemm", ["g_rows", "x_rows"], "dw_2d", transA=1),
        _node("Shape", ["w"], "w_shape"),
        _node("Reshape", ["dw_2d", "w_shape"], "dw"),
        _node("Flatten", ["w"], "w_2d", axis=1),
        _node("MatMul", ["g", "w_2d"], "dx_rows"),
        _node("MatMul", ["reconstruction", "dx_rows"], "dx_tokens"),
        _node("Transpose", ["dx_tokens"], "dx_bcn", perm=[0, 2, 1]),
        _node("Shape", ["dy"], "batch", start=0, end=1),
        _node("Shape", ["w"], "in_channels", start=1, end=2),
        _node("Shape", ["dy"], "spatial", start=2),
        _node("Concat", ["batch", "in_channels", "spatial"], "dx_shape", axis=0),
        _node("Reshape", ["dx_bcn", "dx_shape"], "dx"),
        _int64s("bias_axes", [0, 2, 3]),
        _node("ReduceSum", ["dy", "bias_axes"], "db", keepdims=0),
    ]
    return _function(ops.CONV_GRAD, ["x_hat", "dy", "w", "grad_projection", "reconstruction"],
                     ["dx", "dw", "db"], nodes)


def all_functions():
    return [project_tokens(), project_map(), matmul_grad(), conv_grad()]
