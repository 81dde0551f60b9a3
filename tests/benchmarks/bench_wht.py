"""Micro-benchmark of the LBP-WHT core on ViT shapes (1 CLS + 14x14 tokens; ViT-B/16 at batch 4 by default,
``--dim 192 --batch 8`` for DeiT-Ti/16 at batch 8, ``--dim 384`` for DeiT-S/16).

Prints, measured side by side in one run (round-robin, medians):
  - each projection kernel's bandwidth (bytes read + written per second) next to a plain copy of its input;
  - linear_backward (lp-tri:4 by default) next to the two exact products it replaces (gy @ W and gy^T x), and
    its two reduced products alone (on the projected operands): what the projections add beyond the products.
Writes the numbers as JSON. Usage: python tests/benchmarks/bench_wht.py [--dim 768] [--batch 4] [--repeats 30]
[--json out.json]
"""
import argparse
import json
import time

import numpy as np

from edge_lbp.core.wht import Projector, linear_backward

EXTRA, GRID = 1, (14, 14)


def layers(dim):
    return {"qkv": (dim, 3 * dim), "proj": (dim, dim), "fc1": (dim, 4 * dim), "fc2": (4 * dim, dim)}


def alternate(functions, repeats):
    """Median seconds of each function, called in turn (A, B, A, B, ...) after one warm-up call each."""
    for f in functions.values():
        f()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, f in functions.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_kernels(selection, repeats, rng, dim, batch):
    rows = []
    proj = Projector.of(GRID, EXTRA, 8, selection)
    for channels in (dim, 4 * dim):
        x = rng.standard_normal((batch, proj.geometry.tokens, channels)).astype(np.float32)
        coeffs = rng.standard_normal((batch, proj.rows, channels)).astype(np.float32)
        projected, rebuilt, copy = np.empty_like(coeffs), np.empty_like(x), np.empty_like(x)
        t = alternate({
            "project": lambda: proj.project(x, out=projected),
            "project_grad": lambda: proj.project(x, scale=1 / 64, out=projected),
            "reconstruct": lambda: proj.reconstruct(coeffs, out=rebuilt),
            "memcpy": lambda: np.copyto(copy, x),
        }, repeats)
        moved = x.nbytes + coeffs.nbytes  # every kernel reads one of the two tensors and writes the other
        copy_bw = 2 * x.nbytes / t["memcpy"]
        for kernel in ("project", "project_grad", "reconstruct"):
            bw = moved / t[kernel]
            rows.append(dict(kernel=kernel, channels=channels, ms=1e3 * t[kernel], gb_s=bw / 1e9,
                             memcpy_gb_s=copy_bw / 1e9, ratio=bw / copy_bw))
    return rows


def bench_backward(selection, repeats, rng, dim, batch):
    rows = []
    proj = Projector.of(GRID, EXTRA, 8, selection)
    n = proj.geometry.tokens
    for name, (ci, co) in layers(dim).items():
        x = rng.standard_normal((batch, n, ci)).astype(np.float32)
        gy = rng.standard_normal((batch, n, co)).astype(np.float32)
        w = rng.standard_normal((co, ci)).astype(np.float32)
        x2, gy2 = x.reshape(-1, ci), gy.reshape(-1, co)
        x_hat, g_hat = proj.project(x).reshape(-1, ci), proj.project(gy).reshape(-1, co)
        t = alternate({
            "exact": lambda: (gy2 @ w, gy2.T @ x2),
            "lbp": lambda: linear_backward(x, gy, w, grid=GRID, extra_tokens=EXTRA, selection=selection),
            "products": lambda: (g_hat @ w, g_hat.T @ x_hat),
        }, repeats)
        rows.append(dict(layer=name, ci=ci, co=co, exact_ms=1e3 * t["exact"], lbp_ms=1e3 * t["lbp"],
                         products_ms=1e3 * t["products"], ratio=t["lbp"] / t["exact"],
                         products_ratio=t["products"] / t["exact"], flop_ratio=proj.rows / n))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selection", default="lp-tri:4")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dim", type=int, default=768, help="the model's width (768 ViT-B, 384 DeiT-S, 192 DeiT-Ti)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    kernels = bench_kernels(args.selection, args.repeats, rng, args.dim, args.batch)
    print(f"Projection kernels, {args.selection}, B={args.batch}, {EXTRA}+{GRID[0]}x{GRID[1]} tokens "
          f"(bandwidth = bytes read + written per second)")
    print(f"{'kernel':<14}{'C':>6}{'ms':>9}{'GB/s':>8}{'memcpy GB/s':>13}{'ratio':>8}")
    for r in kernels:
        print(f"{r['kernel']:<14}{r['channels']:>6}{r['ms']:>9.3f}{r['gb_s']:>8.1f}{r['memcpy_gb_s']:>13.1f}"
              f"{r['ratio']:>8.2f}")

    backward = bench_backward(args.selection, args.repeats, rng, args.dim, args.batch)
    print(f"\nlinear_backward ({args.selection}) vs the two exact products (gy @ W, gy^T x), and its two reduced "
          "products alone")
    print(f"{'layer':<7}{'Ci->Co':>12}{'exact ms':>10}{'lbp ms':>9}{'ratio':>8}{'products ms':>13}{'ratio':>8}"
          f"{'FLOP ratio':>12}")
    for r in backward:
        print(f"{r['layer']:<7}{str(r['ci']) + '->' + str(r['co']):>12}{r['exact_ms']:>10.2f}{r['lbp_ms']:>9.2f}"
              f"{r['ratio']:>8.2f}{r['products_ms']:>13.2f}{r['products_ratio']:>8.2f}{r['flop_ratio']:>12.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(selection=args.selection, kernels=kernels, backward=backward), f, indent=1)


if __name__ == "__main__":
    main()
