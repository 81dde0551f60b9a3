"""Time the fused attention kernels against the unfused ops and against per-tile BLAS (a script, not a test).

    python tests/benchmarks/bench_attention.py [--shape deit-s16:32 deit-ti16:8] [--repeats 10] [--threads 2]
    python tests/benchmarks/bench_attention.py --artifact FOLDER --batch 32 [--repeats 4] [--threads 2]

Per shape (image, heads, 197 tokens, head dim 64), the forward and backward of one attention block: ``unfused`` is
the engine's kernels for the ops the pass replaces (stacked MatMul, Softmax, MatMul; FusedMatMul x 4, SoftmaxGrad),
``fused`` the ``edge_lbp::Attention`` and ``AttentionGrad`` kernels, ``blas`` the same fused loop with ``np.dot`` on
each tile inside Numba (needs SciPy: Numba's BLAS comes from ``scipy.linalg.cython_blas``; skipped without it, e.g.
``pip install --target DIR scipy`` and ``PYTHONPATH=DIR``). Configurations alternate; medians and ratios printed.
With ``--artifact`` (an exported training artifact): the artifact loaded twice in this process, with and
without the pass, forward and backward passes alternated: the pass's time, the attention ops' time (the nodes the
pass replaces, from the engine's trace) and the peak bytes of the intermediates (``LiveBytes``).
"""
import argparse
import time

import numba
import numpy as np
from numba import njit, prange

from edge_lbp.runtime.kernels import activation, attention, linear

PRESETS = {"deit-s16": 6, "deit-ti16": 3, "vit-b16": 12}


def _blas_variant():
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        return None

    @njit(parallel=True, fastmath=True)
    def forward(q, kt, v, scale):
        b, h, n, d = q.shape
        m = kt.shape[3]
        out = np.empty((b, n, h, d), np.float32)
        row_max = np.empty((b, h, n), np.float32)
        row_sum = np.empty((b, h, n), np.float32)
        for tile in prange(b * h):
            i, k = tile // h, tile % h
            s = np.dot(np.ascontiguousarray(q[i, k]), np.ascontiguousarray(kt[i, k])) * scale
            attention._probabilities(s, row_max[i, k], row_sum[i, k], True)
            out[i, :, k, :] = np.dot(s, np.ascontiguousarray(v[i, k]))
        return out, row_max, row_sum

    @njit(parallel=True, fastmath=True)
    def backward(dout, q, kt, v, row_max, row_sum, scale):
        b, h, n, d = q.shape
        m = kt.shape[3]
        dq = np.empty((b, h, n, d), np.float32)
        dk = np.empty((b, h, m, d), np.float32)
        dv = np.empty((b, h, m, d), np.float32)
        for tile in prange(b * h):
            i, k = tile // h, tile % h
            qs, ks = np.ascontiguousarray(q[i, k]), np.ascontiguousarray(kt[i, k])
            vs, dos = np.ascontiguousarray(v[i, k]), np.ascontiguousarray(dout[i, k])
            p = np.dot(qs, ks) * scale
            attention._probabilities(p, row_max[i, k], row_sum[i, k], False)
            dv[i, k] = np.dot(np.ascontiguousarray(p.T), dos)
            dp = np.dot(dos, np.ascontiguousarray(vs.T))
            for r in range(n):
                dot = np.float32(0)
                for c in range(m):
                    dot += p[r, c] * dp[r, c]
                for c in range(m):
                    dp[r, c] = p[r, c] * (dp[r, c] - dot) * scale
            dq[i, k] = np.dot(dp, np.ascontiguousarray(ks.T))
            dk[i, k] = np.dot(np.ascontiguousarray(dp.T), qs)
        return dq, dk, dv

    return forward, backward


def _unfused(q, kt, v, dout, scale):
    s = linear.matmul(q * scale, kt)
    p = activation.softmax_rows(s.reshape(-1, s.shape[-1])).reshape(s.shape)
    linear.matmul(p, v)
    dv = linear.matmul(p.swapaxes(-1, -2), dout)
    dp = linear.matmul(dout, v.swapaxes(-1, -2))
    ds = activation._softmax_grad_rows(dp.reshape(-1, dp.shape[-1]), p.reshape(-1, p.shape[-1])).reshape(s.shape)
    return linear.matmul(ds, kt.swapaxes(-1, -2)), linear.matmul((q * scale).swapaxes(-1, -2), ds), dv


def artifact_ab(folder, batch, repeats, threads):
    import edge_lbp
    from edge_lbp.core import ops
    from edge_lbp.runtime import passes
    from edge_lbp.runtime.graph import LiveBytes

    sessions = {"fused": edge_lbp.load(folder, "numba", threads=threads)}
    keep, passes.fuse_attention = passes.fuse_attention, lambda model: model
    try:
        sessions["unfused"] = edge_lbp.load(folder, "numba", threads=threads)
    finally:
        passes.fuse_attention = keep
    kept = {s.name for s in sessions["fused"].training.steps}
    replaced = {s.name for s in sessions["unfused"].training.steps if s.name not in kept or s.op_type == "Softmax"}
    rng = np.random.default_rng(0)
    shape = sessions["fused"].artifact.manifest["inputs"][0]["shape"][1:]
    x, y = rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch)
    results = {name: {"pass": [], "attention": [], "intermediates": []} for name in sessions}
    for rep in range(repeats + 1):  # the first pair warms up
        for name in (list(sessions) if rep % 2 == 0 else list(sessions)[::-1]):
            trace, meter = [], LiveBytes()
            start = time.perf_counter()
            sessions[name].forward_backward(x, y, trace=trace, meter=meter)
            took = time.perf_counter() - start
            attention = sum(t1 - t0 for _, op, node, t0, t1 in trace
                            if (op in (ops.ATTENTION, ops.ATTENTION_GRAD) if name == "fused" else node in replaced))
            if rep:
                for key, value in (("pass", took), ("attention", attention), ("intermediates", meter.peak / 2**20)):
                    results[name][key].append(value)
    for key, unit in (("pass", "s"), ("attention", "s"), ("intermediates", "MB")):
        fused, unfused = (np.median(results[name][key]) for name in ("fused", "unfused"))
        print(f"{key:14s} fused {fused:9.3f} {unit}  unfused {unfused:9.3f} {unit}  ratio {fused / unfused:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", default=["deit-s16:32", "deit-ti16:8"], help="PRESET:BATCH")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--artifact", help="an exported training artifact: the in-process A/B")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.artifact:
        return artifact_ab(args.artifact, args.batch, args.repeats, args.threads)
    if args.threads:
        numba.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    blas = _blas_variant()
    for spec in args.shape:
        preset, batch = spec.split(":")
        heads, n, d, batch = PRESETS[preset], 197, 64, int(batch)
        rng = np.random.default_rng(0)
        qkv = rng.standard_normal((batch, n, 3, heads, d)).astype(np.float32)
        q, k, v = (np.ascontiguousarray(qkv[:, :, i].transpose(0, 2, 1, 3)) for i in range(3))
        kt, dout, scale = k.swapaxes(-1, -2), rng.standard_normal(q.shape).astype(np.float32), d ** -0.5
        _, mx, sm = attention.attention(q, kt, v, scale)
        runs = {"unfused": lambda: _unfused(q, kt, v, dout, scale),
                "fused": lambda: (attention.attention(q, kt, v, scale),
                                  attention.attention_grad(dout, q, kt, v, mx, sm, scale))}
        if blas is not None:
            runs["blas"] = lambda: (blas[0](q, kt, v, np.float32(scale)),
                                    blas[1](dout, q, kt, v, mx, sm, np.float32(scale)))
        times = {name: [] for name in runs}
        for fn in runs.values():
            fn()
        for rep in range(args.repeats):
            for name in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
        flops = 2 * batch * heads * n * n * d * 6  # 2 products forward, 4 backward
        base = np.median(times["unfused"])
        for name, ts in times.items():
            t = np.median(ts)
            print(f"{spec:14s} {name:8s} {t * 1e3:8.1f} ms  {flops / t / 1e9:6.1f} GFLOP/s  ÷ unfused {t / base:.2f}")
    if blas is None:
        print("blas: SciPy is not installed, skipped")


if __name__ == "__main__":
    main()
