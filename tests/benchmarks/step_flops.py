"""What bench_engine.py divides by: a training step's FLOPs (linear layers and attention products, forward and
backward, with LBP's row reductions) and the machine's SGEMM peak through numpy's BLAS."""
import json
import time

PEAK_SIZE = 3072  # the square SGEMM that measures the machine's peak


def _best_of(run, repeats):
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def peak_worker(threads):
    """The SGEMM peak of numpy's BLAS at ``threads``: FLOP/s of the best of a few square products; one JSON line."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((PEAK_SIZE, PEAK_SIZE), dtype=np.float32)
    out = np.empty_like(a)
    with threadpool_limits(threads):
        times = _best_of(lambda: np.dot(a, a, out=out), 5)
    print(json.dumps(dict(flops=2 * PEAK_SIZE ** 3 / times)))


def step_flops(manifest, preset, batch):
    """FLOPs of a training step's products (linear layers and attention, forward and backward; the patch
    embedding and the head left out) with the LBP table's row reductions; full BP when ``manifest`` is None."""
    config, tokens = _geometry(preset)
    return 2 * tokens * batch * _token_macs(config, tokens, manifest)


def flop_ratio(manifest, preset):
    """Step MACs with the LBP table's row reductions / full BP, counting linear layers and attention products."""
    config, tokens = _geometry(preset)
    return _token_macs(config, tokens, manifest) / _token_macs(config, tokens, None)


def _geometry(preset):
    from edge_lbp.export.models import build_model

    model = build_model(preset)
    config = model.config
    return config, (config.img_size // config.patch_size) ** 2 + model.extra_tokens


def _token_macs(config, tokens, manifest):
    """A step's MACs per token; full BP when ``manifest`` is None."""
    dim, hidden = config.dim, config.dim * config.mlp_ratio
    per_block = {"qkv": dim * 3 * dim, "proj": dim * dim, "fc1": dim * hidden, "fc2": hidden * dim}
    attention = config.depth * 2 * tokens * dim  # q k^T and attn v, per token
    linear = config.depth * sum(per_block.values())
    if manifest is None:
        return 3 * (linear + attention)
    backward_linear = 0.0
    for row in manifest["lbp"]["layers"]:
        kind = next((k for k in per_block if row["layer"].startswith("blocks.") and f".{k}." in row["layer"]), None)
        if kind:
            backward_linear += 2 * per_block[kind] * (row["flop_ratio"] or 1.0)
    return linear + attention + backward_linear + 2 * attention
