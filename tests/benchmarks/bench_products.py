"""The linear layers' products of one training step through numpy's BLAS (the engine's) and PyTorch's (MKL on
x86_64), on the same shapes, side by side (a script, not a test).

    python tests/benchmarks/bench_products.py [--preset deit-ti16] [--batch 8] [--threads 2] [--repeats 20]

Per block of a preset (dim D, MLP width 4D, 197 tokens): qkv, proj, fc1 and fc2, each as its forward product, its
input gradient and its weight gradient (12 products); the best of 5 timings of ``repeats`` calls, the two
libraries alternated; the step's sum is the block's times the depth (12). What T1 asks of the engine's other ops
follows from it: the products cannot go faster than BLAS does (docs/benchmarks.md, "Where the time goes").
"""
import argparse
import time

import numpy as np

WIDTHS = {"deit-ti16": 192, "deit-s16": 384, "vit-b16": 768}
TOKENS, DEPTH = 197, 12


def shapes(dim, rows):
    layers = {"qkv": (dim, 3 * dim), "proj": (dim, dim), "fc1": (dim, 4 * dim), "fc2": (4 * dim, dim)}
    for name, (i, o) in layers.items():
        yield f"{name} forward", (rows, i), (i, o)
        yield f"{name} input grad", (rows, o), (o, i)
        yield f"{name} weight grad", (o, rows), (rows, i)


def best(call, repeats):
    call()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        times.append((time.perf_counter() - start) / repeats)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(WIDTHS), default="deit-ti16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads, user_api="blas")
    rng = np.random.default_rng(0)
    total = {"numpy": 0.0, "torch": 0.0}
    print(f"{args.preset}, batch {args.batch}, {args.threads} thread(s); GFLOP/s per product")
    for name, sa, sb in shapes(WIDTHS[args.preset], args.batch * TOKENS):
        a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
        out = np.empty((sa[0], sb[1]), np.float32)
        ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
        ours = best(lambda: np.matmul(a, b, out=out), args.repeats)
        theirs = best(lambda: torch.mm(ta, tb, out=tout), args.repeats)
        total["numpy"] += ours
        total["torch"] += theirs
        flops = 2 * sa[0] * sa[1] * sb[1]
        print(f"  {name:18s} {sa} x {sb}: numpy {flops / ours / 1e9:6.1f}  torch {flops / theirs / 1e9:6.1f}")
    print(f"a step's products ({DEPTH} blocks): numpy {total['numpy'] * DEPTH * 1e3:.0f} ms, torch "
          f"{total['torch'] * DEPTH * 1e3:.0f} ms, numpy / torch {total['numpy'] / total['torch']:.2f}")


if __name__ == "__main__":
    main()
