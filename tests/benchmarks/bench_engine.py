"""T1, T2, P1-P4 and P6 of shared/spec/benchmarks.md: training-step time and peak memory of the numba engine
against PyTorch eager and ONNX Runtime training, and the time from a new process to its first training step.

A preset model (``vit-b16``, ``deit-ti16``, ``deit-s16``, ...) with random weights and inputs, SGD, full BP
(--lbp none) and LBP lp-tri:4 / lp-tri:6 artifacts; the PyTorch peer trains the same preset module with
``torch.optim.SGD`` at the same batch and thread count. Each configuration runs in its own process (peak RSS is
per process), in rounds that alternate the configurations (A, B, C, ... A, B, C, ...); step times are pooled per
configuration and medians compared. P6 times ``vit-tiny`` from process start to its first training step done,
with an empty Numba cache (cold) and then with the cache that run filled (warm), alternated the same way.
The numba engine runs twice: ``numba`` with its default threads (tuned per pass, up to all cores) and
``numba-fixed`` with ``--threads`` like the other engines. ``--busy 1`` keeps one core busy with a spinning process
for the whole run. ``--engines ... executorch`` adds ExecuTorch's training runtime (``pip install
executorch==1.5.*``); ``torch-compile`` adds PyTorch with ``torch.compile`` (Inductor, which compiles C++ at run
time: it needs a C++ compiler, ``g++`` or ``$CXX``; the compilation is part of the warm-up, not timed).
``--passes all no-norm none`` runs the numba engine with all of its load-time graph passes (``all``), without
``runtime.norm_passes`` (``no-norm``), without ``runtime.attention_pass`` (``no-attn``) and with none (``none``), as configurations of their own (A/B). Every row
also shows its fraction of the machine's SGEMM peak: the step's FLOPs (the products of the linear layers and of
attention, forward and backward, fewer under LBP) ÷ its median time ÷ the peak that numpy's BLAS reaches on a
large square product at the row's thread count, measured in the same run. Usage:

    python tests/benchmarks/bench_engine.py [--preset vit-b16] [--batch 4] [--steps 5] [--rounds 2]
        [--engines numba numba-fixed ort torch torch-compile] [--lbp none lp-tri:4 lp-tri:6] [--threads 2]
        [--passes all no-norm no-attn none] [--busy 0] [--startup-rounds 1] [--workdir DIR] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from step_flops import PEAK_SIZE, flop_ratio, peak_worker, step_flops

# "numba" runs with the engine's default threads (tuned per pass, up to all cores); "numba-fixed" with --threads.
CONFIGS = [("numba", "none"), ("numba", "lp-tri:4"), ("numba", "lp-tri:6"), ("numba-fixed", "none"),
           ("numba-fixed", "lp-tri:4"), ("ort", "none"), ("ort", "lp-tri:4"), ("torch", "none"),
           ("torch-compile", "none"), ("executorch", "none")]
PEERS = ("torch", "torch-compile", "executorch")  # engines that train the preset module, not an exported artifact
# The numba engine's load-time passes: all, all but runtime.norm_passes, all but runtime.attention_pass, none.
PASSES = ("all", "no-norm", "no-attn", "none")
STARTUP_GOALS = {"cold": 30, "warm": 3}


def peak_rss():
    """This process's peak resident memory. (getrusage's ru_maxrss is not used: on Linux it carries the parent's
    peak across fork and exec, so every worker would report the driver's.)"""
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _inputs(shape, batch):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch)


def _timed(step, warmup, steps):
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def worker(folder, engine, args):
    """Runs in a child process: load, warm up, time training steps; prints one JSON line."""
    import psutil

    if engine in ("torch", "torch-compile"):
        return torch_worker(args, compiled=engine == "torch-compile")
    if engine == "executorch":
        return executorch_worker(folder, args)
    import edge_lbp

    engine = _without_passes(engine)
    start = time.perf_counter()
    threads = None if engine == "numba" else args.threads or os.cpu_count()
    session = edge_lbp.load(folder, engine if engine in ("ort", "numba") else "numba", threads=threads)
    load_s = time.perf_counter() - start
    x, y = _inputs(session.artifact.manifest["inputs"][0]["shape"][1:], args.batch)
    after_load = psutil.Process().memory_info().rss
    # The tuned engine's first passes try each thread count twice: warm-up, not the steady state measured here
    # (which includes the re-tries every REPROBE-th pass when --steps reaches it).
    tuner = session.threads.tuner if session.engine == "numba" else None
    warmup = args.warmup + (2 * len(tuner.candidates) if tuner else 0)
    times = _timed(lambda: session.train_step(x, y), warmup, args.steps)
    print(json.dumps(dict(times=times, load_s=load_s, rss_after_load=after_load, peak_rss=peak_rss())))


def _without_passes(engine):
    """``numba[:no-norm|:no-attn|:none]`` -> the engine's name, with the load-time passes that suffix names switched off."""
    engine, _, passes = engine.partition(":")
    if passes == "none":
        from edge_lbp.runtime import numba_session

        numba_session.training_passes = lambda model: model
    elif passes == "no-norm":
        from edge_lbp.runtime import passes as graph_passes

        graph_passes.norm_passes = lambda model: model
    elif passes == "no-attn":
        from edge_lbp.runtime import passes as graph_passes

        graph_passes.fuse_attention = lambda model: model
    return engine


def torch_worker(args, compiled=False):
    """The PyTorch peer: the same preset module, ``torch.optim.SGD``, the same batch and thread count; eager, or
    ``torch.compile``'s default (Inductor) when ``compiled``."""
    import psutil
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    model, x, y = _preset_batch(args)
    if compiled:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    after_load = psutil.Process().memory_info().rss

    def step():
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

    times = _timed(step, args.warmup, args.steps)
    print(json.dumps(dict(times=times, load_s=0.0, rss_after_load=after_load, peak_rss=peak_rss())))


def _preset_batch(args):
    """The preset module and a random batch for it, as torch tensors."""
    import torch

    from edge_lbp.export.models import build_model

    model = build_model(args.preset)
    config = model.config
    x, y = _inputs((config.in_chans, config.img_size, config.img_size), args.batch)
    return model, torch.from_numpy(x), torch.from_numpy(y)


def export_executorch(args, path):
    """The preset module with its loss as an ExecuTorch training program (joint forward + backward graph) for
    the benchmark's batch."""
    import torch
    from executorch.exir import to_edge
    from torch.export.experimental import _export_forward_backward

    class WithLoss(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.loss = model, torch.nn.CrossEntropyLoss()

        def forward(self, x, y):
            return self.loss(self.model(x), y)

    model, x, y = _preset_batch(args)
    program = _export_forward_backward(torch.export.export(WithLoss(model), (x, y), strict=True))
    path.write_bytes(to_edge(program).to_executorch().buffer)


def executorch_worker(path, args):
    """ExecuTorch's training runtime (portable CPU kernels) with its SGD, on the program ``export_executorch``
    wrote."""
    import psutil
    from executorch.extension.training import _load_for_executorch_for_training, get_sgd_optimizer

    _, x, y = _preset_batch(args)
    module = _load_for_executorch_for_training(path)
    module.forward_backward("forward", (x, y))  # the parameters are readable only after a first pass
    optimizer = get_sgd_optimizer(module.named_parameters(), 1e-3, 0, 0, 0, False)
    after_load = psutil.Process().memory_info().rss

    def step():
        module.forward_backward("forward", (x, y))
        optimizer.step(module.named_gradients())

    times = _timed(step, max(0, args.warmup - 1), args.steps)
    print(json.dumps(dict(times=times, load_s=0.0, rss_after_load=after_load, peak_rss=peak_rss())))


def startup_worker(folder):
    """P6: load ``folder`` with the numba engine and run one training step; prints the wall-clock time it ended."""
    import numpy as np

    import edge_lbp

    session = edge_lbp.load(folder, "numba")
    shape = session.artifact.manifest["inputs"][0]["shape"][1:]
    session.train_step(np.zeros((2, *shape), np.float32), np.zeros(2, np.int64))
    print(json.dumps(dict(done=time.time())))


def export_all(preset, folder, optimizer, lbps):
    from edge_lbp.methods import export_model

    paths = {}
    for lbp in sorted(lbps):
        paths[lbp] = Path(folder) / f"{preset}-{lbp.replace(':', '')}"
        if not (paths[lbp] / "manifest.json").exists():
            print(f"exporting {preset} --lbp {lbp} ...", file=sys.stderr, flush=True)
            export_model(preset, paths[lbp], lbp=lbp, optimizer=optimizer)
    return paths


def _child(args, *extra, env=None, optional=False):
    """A worker's JSON line; a failed worker ends the run, or returns None when ``optional`` (the reason printed)."""
    cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--steps",
           str(args.steps), "--warmup", str(args.warmup), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        if optional:
            print(f"{' '.join(extra)} did not run: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        sys.exit(f"{' '.join(extra)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_peaks(args):
    """SGEMM peak FLOP/s at the engine's default thread cap (all cores) and at ``--threads``."""
    return {n: _child(args, "--peak", str(n))["flops"] for n in {os.cpu_count(), args.threads or os.cpu_count()}}


def measure_steps(args, configs, folders):
    runs = {c: dict(times=[], peak=[], after_load=[]) for c in configs}
    for round_ in range(args.rounds):
        for engine, lbp in configs:
            print(f"round {round_ + 1}/{args.rounds}: {engine} {lbp}", file=sys.stderr, flush=True)
            result = _child(args, "--worker", str(folders.get((engine, lbp), "")), engine,
                            optional=engine == "torch-compile")
            if result is None:
                continue
            runs[(engine, lbp)]["times"] += result["times"]
            runs[(engine, lbp)]["peak"].append(result["peak_rss"])
            runs[(engine, lbp)]["after_load"].append(result["rss_after_load"])
    return runs


def measure_startup(args, workdir):
    """P6: seconds from spawning a process to its first training step done, cold and warm Numba cache."""
    folder = export_all("vit-tiny", workdir, args.optimizer, ["lp-tri:4"])["lp-tri:4"]
    times = {"cold": [], "warm": []}
    for round_ in range(args.startup_rounds):
        cache = tempfile.mkdtemp(prefix="bench_numba_cache_")
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for kind in ("cold", "warm"):
            print(f"startup {round_ + 1}/{args.startup_rounds}: {kind} Numba cache", file=sys.stderr, flush=True)
            start = time.time()
            times[kind].append(_child(args, "--startup", str(folder), env=env)["done"] - start)
    return times


def _pass_ratios(engines, passes):
    """numba ÷ PyTorch, LBP ÷ full BP and the passes' own effect, per engine and load-time pass set."""
    rows = []
    for engine in engines:
        for variant in passes:
            e = engine if variant == "all" else f"{engine}:{variant}"
            rows += [(f"   {e} none / torch none", (e, "none"), ("torch", "none")),
                     (f"   {e} lp-tri:4 / torch none", (e, "lp-tri:4"), ("torch", "none")),
                     (f"   {e} lp-tri:4 / {e} none", (e, "lp-tri:4"), (e, "none")),
                     (f"   {e} none / torch-compile none", (e, "none"), ("torch-compile", "none"))]
            if variant != "all":
                rows += [(f"   {engine} {lbp} / {e} {lbp} (passes)", (engine, lbp), (e, lbp))
                         for lbp in ("none", "lp-tri:4")]
    return rows


def report(args, runs, paths, startup, peaks):
    runs = {c: r for c, r in runs.items() if r["times"]}
    manifests = {lbp: json.loads((paths[lbp] / "manifest.json").read_text()) for lbp in paths}
    limits = {lbp: flop_ratio(manifests[lbp], args.preset) for lbp in paths}
    limits.setdefault("none", 1.0)
    flops = {lbp: step_flops(manifests[lbp] if lbp != "none" else None, args.preset, args.batch) for lbp in limits}
    med = {c: statistics.median(r["times"]) for c, r in runs.items()}
    peak = {c: max(r["peak"]) for c, r in runs.items()}
    work = {c: max(p - a for p, a in zip(r["peak"], r["after_load"])) for c, r in runs.items()}
    fixed = args.threads or os.cpu_count()
    # The tuned engine may use every core; the others run at --threads.
    sgemm = {c: peaks[os.cpu_count() if c[0].partition(":")[0] == "numba" else fixed] for c in runs}
    print(f"\n{args.preset}, batch {args.batch}, {args.optimizer}, {fixed} threads, "
          f"{args.rounds} rounds x {args.steps} steps, {args.busy} busy core(s) beside the run")
    print("SGEMM peak (numpy's BLAS, " + f"{PEAK_SIZE}^2): "
          + ", ".join(f"{p / 1e9:.0f} GFLOP/s at {n} thread(s)" for n, p in sorted(peaks.items())))
    print(f"{'engine':<22}{'lbp':<10}{'median s':>10}{'p90 s':>8}{'peak RSS MB':>13}{'step MB':>9}"
          f"{'FLOP ratio':>12}{'GFLOP/s':>9}{'of peak':>9}")
    for c in runs:
        times = sorted(runs[c]["times"])
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        rate = flops[c[1]] / med[c]
        print(f"{c[0]:<22}{c[1]:<10}{med[c]:>10.3f}{p90:>8.3f}{peak[c] / 2**20:>13.0f}{work[c] / 2**20:>9.0f}"
              f"{limits[c[1]]:>12.2f}{rate / 1e9:>9.1f}{rate / sgemm[c]:>9.2f}")
    wanted = [
        ("T1 numba none / torch none (goal <= 1.0)", med, ("numba", "none"), ("torch", "none")),
        ("T2 numba lp-tri:4 / torch none (goal <= 0.6)", med, ("numba", "lp-tri:4"), ("torch", "none")),
        ("P1 numba lp-tri:4 / numba none (goal <= 0.55)", med, ("numba", "lp-tri:4"), ("numba", "none")),
        ("P1 numba lp-tri:6 / numba none", med, ("numba", "lp-tri:6"), ("numba", "none")),
        ("   numba none / numba-fixed none (tuned / fixed threads)", med, ("numba", "none"), ("numba-fixed", "none")),
        ("   numba lp-tri:4 / numba-fixed lp-tri:4", med, ("numba", "lp-tri:4"), ("numba-fixed", "lp-tri:4")),
        ("T1 at fixed threads: numba-fixed none / torch none", med, ("numba-fixed", "none"), ("torch", "none")),
        ("P2 numba-fixed none / ort none (goal <= 1.0)", med, ("numba-fixed", "none"), ("ort", "none")),
        ("P3 numba-fixed lp-tri:4 / ort none (goal <= 0.55)", med, ("numba-fixed", "lp-tri:4"), ("ort", "none")),
        ("   ort lp-tri:4 / ort none (function bodies)", med, ("ort", "lp-tri:4"), ("ort", "none")),
        ("P4 peak RSS numba lp-tri:4 / numba none (goal <= 0.7)", peak, ("numba", "lp-tri:4"), ("numba", "none")),
        ("P4 step memory numba lp-tri:4 / numba none", work, ("numba", "lp-tri:4"), ("numba", "none")),
        ("P4 peak RSS numba none / torch none (goal <= 1.0)", peak, ("numba", "none"), ("torch", "none")),
        ("P4 peak RSS numba lp-tri:4 / torch none", peak, ("numba", "lp-tri:4"), ("torch", "none")),
        ("P4 peak RSS numba none / ort none (goal <= 1.0)", peak, ("numba", "none"), ("ort", "none")),
        ("   numba none / executorch none", med, ("numba", "none"), ("executorch", "none")),
        ("   torch-compile none / torch none", med, ("torch-compile", "none"), ("torch", "none")),
    ] + [(name, med, a, b) for name, a, b in _pass_ratios(("numba", "numba-fixed"), args.passes)]
    ratios = {name: table[a] / table[b] for name, table, a, b in wanted if a in table and b in table}
    print()
    for name, value in ratios.items():
        print(f"{name:<62}{value:6.2f}")
    for lbp in sorted(set(limits) - {"none"}):
        print(f"{'FLOP limit ' + lbp:<62}{limits[lbp]:6.2f}")
    for kind, times in startup.items():
        name = f"P6 vit-tiny start to first step, {kind} cache (goal <= {STARTUP_GOALS[kind]} s)"
        print(f"{name:<62}{statistics.median(times):6.1f} s  (runs: {', '.join(f'{t:.1f}' for t in times)})")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            config=vars(args), medians={" ".join(c): m for c, m in med.items()},
            times={" ".join(c): r["times"] for c, r in runs.items()},
            peak_rss={" ".join(c): p for c, p in peak.items()}, flop_limits=limits, ratios=ratios,
            startup=startup, sgemm_peaks=peaks, step_flops=flops), indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit-b16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["numba", "numba-fixed", "ort", "torch"],
                        choices=["numba", "numba-fixed", "ort", "torch", "torch-compile", "executorch"],
                        help="executorch: its training runtime, single-threaded portable kernels (slow; opt-in); "
                             "torch-compile: torch.compile (needs a C++ compiler at run time)")
    parser.add_argument("--passes", nargs="+", default=["all"], choices=PASSES,
                        help="the numba engine's load-time passes, each set a configuration of its own (A/B)")
    parser.add_argument("--lbp", nargs="+", default=["none", "lp-tri:4", "lp-tri:6"],
                        help="backward configurations of the exported engines (default: none lp-tri:4 lp-tri:6)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of numba-fixed, ort and the peers (default: all cores)")
    parser.add_argument("--busy", type=int, default=0, help="cores kept busy by spinning processes during the run")
    parser.add_argument("--startup-rounds", type=int, default=1, help="P6 cold/warm pairs (0: skip P6)")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--workdir", help="keep the artifacts here and reuse them (default: a temporary folder)")
    parser.add_argument("--json")
    parser.add_argument("--worker", nargs=2, metavar=("ARTIFACT", "ENGINE"), help=argparse.SUPPRESS)
    parser.add_argument("--startup", metavar="ARTIFACT", help=argparse.SUPPRESS)
    parser.add_argument("--peak", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], args)
    if args.startup:
        return startup_worker(args.startup)
    if args.peak:
        return peak_worker(args.peak)

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_engine_")
    configs = [(e if p == "all" or not e.startswith("numba") else f"{e}:{p}", lbp) for e, lbp in CONFIGS
               for p in (args.passes if e.startswith("numba") else ["all"])
               if e in args.engines and (lbp in args.lbp or e in PEERS)]
    paths = export_all(args.preset, workdir, args.optimizer, {lbp for e, lbp in configs if e not in PEERS})
    folders = {c: paths[c[1]] for c in configs if c[0] not in PEERS}
    if "executorch" in args.engines:
        folders[("executorch", "none")] = Path(workdir) / f"{args.preset}-b{args.batch}.pte"
        if not folders[("executorch", "none")].exists():
            print(f"exporting {args.preset} to ExecuTorch ...", file=sys.stderr, flush=True)
            export_executorch(args, folders[("executorch", "none")])
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        peaks = measure_peaks(args)
        runs = measure_steps(args, configs, folders)
        later = measure_peaks(args)  # the peak is what the machine reaches at best: the higher of before and after
        peaks = {n: max(p, later[n]) for n, p in peaks.items()}
        startup = measure_startup(args, workdir) if args.startup_rounds else {}
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    report(args, runs, paths, startup, peaks)


if __name__ == "__main__":
    main()
