"""Gradient accumulation and optimizer kernels (com.microsoft training ops), updating the engine's buffers in place.

A SEQUENCE value is a Python list of numpy arrays. ORT aliases these ops' outputs to their inputs (the optimizer
graphs of onnxruntime-training 1.19 do not even declare the updated-tensor outputs, only the flag), so the arrays
passed in are modified and returned as the same objects. The arithmetic mirrors ORT's CPU kernels in float32,
operation by operation, so results match to rounding.

The updates run as one Numba pass per tensor (parallel for large ones), without fast-math: each element goes
through the same float32 operations in the same order as the numpy expressions they replace (no fused
multiply-add), so the results are the same bits, and the same for any thread count. As numpy passes, SGD on
ViT-B/16 took 70 ms a step (a temporary per tensor, one thread) and AdamW about eight passes over every parameter.
"""
import numpy as np
from numba import njit, prange

from edge_lbp.runtime.kernels.common import MS, flag, overwrites
from edge_lbp.runtime.registry import register


def _enabled(signal):
    """An optional bool[1] input; absent means true."""
    return signal is None or bool(signal.reshape(-1)[0])


def _check_sequences(node, first, *others):
    # ORT enforces this too; without it numpy would silently broadcast a mismatched gradient into a weight.
    if not first or any(len(s) != len(first) for s in others):
        raise ValueError(f"{node.name}: {node.op_type} needs non-empty sequences of equal length, "
                         f"got {[len(first)] + [len(s) for s in others]}")
    for i, group in enumerate(zip(first, *others)):
        if any(t.shape != group[0].shape for t in group):
            raise ValueError(f"{node.name}: {node.op_type} tensor {i} has mismatched shapes "
                             f"{[t.shape for t in group]}")


@register("InPlaceAccumulatorV2", MS)
def in_place_accumulator_v2(attrs, node):
    """(buffer, value, overwrite_flag?) -> (updated_flag bool[1], buffer?): buffer += value, or buffer = value when
    the flag is true (the lazy gradient reset of the first step after an optimizer step)."""
    n_out = len(node.output)

    def run(buffer, value, overwrite=None):
        if overwrites(overwrite):
            np.copyto(buffer, value)
        else:
            np.add(buffer, value, out=buffer)
        return (flag(True), buffer)[:n_out]

    return run


@njit(inline="always")
def _sgd_at(w, g, lr, i):
    w[i] -= lr * g[i]


@njit(inline="always")
def _moments(g, m1, m2, i, alpha, beta, one_minus_alpha, one_minus_beta):
    # m1 = alpha*m1 + (1-alpha)*g ; m2 = beta*m2 + ((1-beta)*g)*g  (ORT's evaluation order)
    m1[i] = m1[i] * alpha + one_minus_alpha * g[i]
    m2[i] = m2[i] * beta + (one_minus_beta * g[i]) * g[i]


@njit(inline="always")
def _adamw0_at(w, g, m1, m2, i, lr, decay, alpha, beta, one_minus_alpha, one_minus_beta, epsilon, ac, bc):
    """torch AdamW: w -= w*lr*wd; then w -= lr*m1 / ((sqrt(m2/bc) + eps) * ac)."""
    if decay != 0:
        w[i] -= w[i] * lr * decay
    _moments(g, m1, m2, i, alpha, beta, one_minus_alpha, one_minus_beta)
    w[i] -= lr * m1[i] / ((np.sqrt(m2[i] / bc) + epsilon) * ac)


@njit(inline="always")
def _adamw1_at(w, g, m1, m2, i, lr_corrected, decay, lr_decay, alpha, beta, one_minus_alpha, one_minus_beta,
               epsilon):
    """Hugging Face AdamW: w -= lr_corrected*m1 / (sqrt(m2) + eps); then w -= (lr*wd)*w."""
    _moments(g, m1, m2, i, alpha, beta, one_minus_alpha, one_minus_beta)
    w[i] -= lr_corrected * m1[i] / (np.sqrt(m2[i]) + epsilon)
    if decay != 0:
        w[i] -= lr_decay * w[i]


# Each update in a parallel pass for large tensors, a serial one for small ones (biases, norms): starting the
# threads costs tens of microseconds per pass, and a ViT has ~150 tensors, most of them small. Two functions per
# update, the element's arithmetic shared: Numba fixes ``parallel`` when it compiles, and one Python function
# compiled both ways would share one cache index. Measured on an
# Intel Xeon VM, 2 threads, DeiT-Ti/16 (5.5 M parameters): SGD 11.8 ms a step in parallel passes only, AdamW 14.5
# ms (7.8 ms at one thread).
PARALLEL_FROM = 1 << 16


@njit(parallel=True, cache=True)
def _sgd(w, g, lr):
    for i in prange(w.size):
        _sgd_at(w, g, lr, i)


@njit(cache=True)
def _sgd_small(w, g, lr):
    for i in range(w.size):
        _sgd_at(w, g, lr, i)


@njit(parallel=True, cache=True)
def _adamw_mode0(w, g, m1, m2, lr, decay, alpha, beta, one_minus_alpha, one_minus_beta, epsilon, ac, bc):
    for i in prange(w.size):
        _adamw0_at(w, g, m1, m2, i, lr, decay, alpha, beta, one_minus_alpha, one_minus_beta, epsilon, ac, bc)


@njit(cache=True)
def _adamw_mode0_small(w, g, m1, m2, lr, decay, alpha, beta, one_minus_alpha, one_minus_beta, epsilon, ac, bc):
    for i in range(w.size):
        _adamw0_at(w, g, m1, m2, i, lr, decay, alpha, beta, one_minus_alpha, one_minus_beta, epsilon, ac, bc)


@njit(parallel=True, cache=True)
def _adamw_mode1(w, g, m1, m2, lr_corrected, decay, lr_decay, alpha, beta, one_minus_alpha, one_minus_beta,
                 epsilon):
    for i in prange(w.size):
        _adamw1_at(w, g, m1, m2, i, lr_corrected, decay, lr_decay, alpha, beta, one_minus_alpha, one_minus_beta,
                   epsilon)


@njit(cache=True)
def _adamw_mode1_small(w, g, m1, m2, lr_corrected, decay, lr_decay, alpha, beta, one_minus_alpha,
                       one_minus_beta, epsilon):
    for i in range(w.size):
        _adamw1_at(w, g, m1, m2, i, lr_corrected, decay, lr_decay, alpha, beta, one_minus_alpha, one_minus_beta,
                   epsilon)


def _flat(*arrays):
    """Flat views of the tensors updated in place (a reshape that copied would update the copy)."""
    if not all(a.flags.c_contiguous and a.dtype == np.float32 for a in arrays):
        raise ValueError("optimizer tensors must be C-contiguous float32 arrays (they are updated in place)")
    return [a.reshape(-1) for a in arrays]


@register("AdamWOptimizer", MS)
def adamw_optimizer(attrs, node):
    """(lr float[1], step int64[1], weights, gradients, momentums_1, momentums_2 [sequences], update_signal?) ->
    (updated_flag bool[1], weights?, momentums_1?, momentums_2?).

    adam_mode 0 (torch AdamW): decay w by lr*wd first, then w -= lr*m1 / (ac * (sqrt(m2/bc) + eps)).
    adam_mode 1 (Hugging Face): w -= lr*sqrt(bc)/ac * m1 / (sqrt(m2) + eps), then decay w by lr*wd.
    ac = 1 - alpha^step and bc = 1 - beta^step with correct_bias=1, else 1.
    """
    # Defaults are the schema's, which ORT fills into the node (weight_decay 1e-2, not the C++ kernel's 0).
    alpha, beta = np.float32(attrs.get("alpha", 0.9)), np.float32(attrs.get("beta", 0.999))
    epsilon, weight_decay = np.float32(attrs.get("epsilon", 1e-8)), np.float32(attrs.get("weight_decay", 1e-2))
    correct_bias, adam_mode = attrs.get("correct_bias", 1), attrs.get("adam_mode", 0)
    # ORT's kernel refuses adam_mode=0 without bias correction (it would not be torch's AdamW any more).
    if adam_mode not in (0, 1) or correct_bias not in (0, 1) or (adam_mode == 0 and not correct_bias):
        raise ValueError(f"{node.name}: AdamWOptimizer adam_mode={adam_mode!r}, correct_bias={correct_bias!r} "
                         "unsupported (each must be 0 or 1, and correct_bias=1 when adam_mode=0)")
    n_out = len(node.output)

    one_minus_alpha, one_minus_beta = np.float32(1) - alpha, np.float32(1) - beta

    def mode0(w, g, m1, m2, lr, ac, bc):
        kernel = _adamw_mode0 if w.size >= PARALLEL_FROM else _adamw_mode0_small
        kernel(*_flat(w, g, m1, m2), lr, weight_decay, alpha, beta, one_minus_alpha, one_minus_beta, epsilon, ac, bc)

    def mode1(w, g, m1, m2, lr, ac, bc):
        lr_corrected = lr * (np.sqrt(bc) / ac)
        kernel = _adamw_mode1 if w.size >= PARALLEL_FROM else _adamw_mode1_small
        kernel(*_flat(w, g, m1, m2), lr_corrected, weight_decay, lr * weight_decay, alpha, beta, one_minus_alpha,
               one_minus_beta, epsilon)

    update = mode1 if adam_mode else mode0

    def run(lr, step, weights, gradients, momentums_1, momentums_2, update_signal=None):
        _check_sequences(node, weights, gradients, momentums_1, momentums_2)
        enabled = _enabled(update_signal)
        if enabled:
            lr, t = np.float32(lr.reshape(-1)[0]), int(step.reshape(-1)[0])
            # std::pow(float, int64) is evaluated in double, then rounded to float32 as ORT does.
            ac = np.float32(1) - np.float32(float(alpha) ** t) if correct_bias else np.float32(1)
            bc = np.float32(1) - np.float32(float(beta) ** t) if correct_bias else np.float32(1)
            for w, g, m1, m2 in zip(weights, gradients, momentums_1, momentums_2):
                update(w, g, m1, m2, lr, ac, bc)
        return (flag(enabled), weights, momentums_1, momentums_2)[:n_out]

    return run


@register("SGDOptimizerV2", MS)
def sgd_optimizer_v2(attrs, node):
    """(lr float[1], weights, gradients [sequences], update_signal?) -> (update_completed bool[1], weights?):
    w -= lr * g. No momentum, no weight decay (the op has no attributes)."""
    n_out = len(node.output)

    def run(lr, weights, gradients, update_signal=None):
        _check_sequences(node, weights, gradients)
        enabled = _enabled(update_signal)
        if enabled:
            lr = np.float32(lr.reshape(-1)[0])
            for w, g in zip(weights, gradients):
                (_sgd if w.size >= PARALLEL_FROM else _sgd_small)(*_flat(w, g), lr)
        return (flag(enabled), weights)[:n_out]

    return run
