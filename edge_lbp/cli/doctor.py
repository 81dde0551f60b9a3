"""``edge-lbp doctor``: what this machine offers (board, cores, memory, sensors, Numba, BLAS, engines) and what
to fix for anything missing. It only reads and reports: the exit code is 0 whatever is missing."""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import List, Optional

from edge_lbp._version import __version__
from edge_lbp.core.config import THREAD_SETTINGS
from edge_lbp.status import ExitStatus

# onnxruntime-training(-cpu) 1.19.2 publishes x86_64 wheels, and macOS universal2 ones (arm64 included)
ORT_MACHINES = ("x86_64", "AMD64")
ORT_DISTRIBUTIONS = ("onnxruntime-training-cpu", "onnxruntime-training")  # the ort extra's, or its Linux twin


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _threading_layer() -> dict:
    """Numba picks its threading layer when the first parallel function runs, so run a tiny one first (once per
    process: the layer cannot change afterwards)."""
    try:
        import numba
        import numpy as np

        @numba.njit(parallel=True)
        def _total(values):
            acc = 0.0
            for i in numba.prange(values.shape[0]):
                acc += values[i]
            return acc

        _total(np.ones(64))
        return {"layer": numba.threading_layer(), "error": None}
    except Exception as err:  # a broken TBB/OpenMP install surfaces here; report it instead of failing
        return {"layer": None, "error": f"{type(err).__name__}: {err}"}


def _writable(path: Path) -> bool:
    """Whether ``path`` can be written, or created below its nearest existing parent (without creating it)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _numba_section(to_fix: List[str]) -> dict:
    import numba

    cache_dir = os.environ.get("NUMBA_CACHE_DIR") or str(numba.config.CACHE_DIR or "")
    from edge_lbp import kernel_cache

    section = {"version": numba.__version__, "threads": numba.config.NUMBA_NUM_THREADS,
               "threading_layer": _threading_layer(), "cache_dir": cache_dir or None,
               "cache_writable": bool(cache_dir) and _writable(Path(cache_dir)), "cache": kernel_cache.status()}
    if section["threading_layer"]["error"]:
        to_fix.append(f"Numba's parallel kernels do not start ({section['threading_layer']['error']}): "
                      "pip install tbb, or install the system's OpenMP runtime (libgomp)")
    if not section["cache_writable"]:
        to_fix.append(f"Numba cache folder {cache_dir or '(unset)'} is not writable: kernels are recompiled in every "
                      "process; set NUMBA_CACHE_DIR to a writable folder")
    return section


def _blas_section(to_fix: List[str]) -> List[dict]:
    from threadpoolctl import threadpool_info

    pools = [{k: pool.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "threading_layer")}
             for pool in threadpool_info()]
    if not any(pool["user_api"] == "blas" for pool in pools):
        to_fix.append("no BLAS library found by threadpoolctl: products run unthreaded; reinstall numpy from wheels")
    return pools


def _engines(to_fix: List[str]) -> dict:
    engines = {"numba": {"available": True, "detail": "device engine (numpy + Numba)"}}
    machine = platform.machine()
    if machine not in ORT_MACHINES and platform.system() != "Darwin":
        engines["ort"] = {"available": False, "detail": f"onnxruntime-training has no wheels for {machine}"}
        return engines
    try:
        importlib.import_module("onnxruntime.training.api")
    except Exception as err:  # ImportError, or a wheel built for another CPU / glibc
        engines["ort"] = {"available": False, "detail": f"onnxruntime-training not importable ({err})"}
        to_fix.append("the ort engine (reference) needs onnxruntime-training: pip install 'edge-lbp[ort]'")
    else:
        installed = next((d for d in ORT_DISTRIBUTIONS if _version(d)), ORT_DISTRIBUTIONS[0])
        engines["ort"] = {"available": True, "detail": f"{installed} {_version(installed)}"}
    return engines


def _export(to_fix: List[str]) -> dict:
    torch = _version("torch") if importlib.util.find_spec("torch") else None
    if torch is None and platform.machine() in ORT_MACHINES:
        to_fix.append("exporting a PyTorch model (edge-lbp export) needs torch: pip install 'edge-lbp[export]' "
                      "(an ONNX file exports without it; the device needs only the artifact folder)")
    return {"available": torch is not None, "torch": torch}


def full_report() -> dict:
    """The devices report plus Numba, BLAS, OpenMP, engines and the export extra; ``to_fix`` gathers every hint."""
    from edge_lbp.devices import device_report

    report = device_report()
    to_fix = list(report.pop("hints"))
    report["numba"] = _numba_section(to_fix)
    report["thread_settings"] = {name: os.environ.get(name) for name in THREAD_SETTINGS}
    for name, value in report["thread_settings"].items():
        if value != THREAD_SETTINGS[name]:
            to_fix.append(f"{name}={value}: threads that spin while idle slow the alternation of Numba kernels and "
                          f"BLAS; unset it (edge_lbp sets {THREAD_SETTINGS[name]}) or set {THREAD_SETTINGS[name]}")
    report["blas"] = _blas_section(to_fix)
    report["engines"] = _engines(to_fix)
    report["export"] = _export(to_fix)
    report["edge_lbp"] = __version__
    report["python"] = platform.python_version()
    report["to_fix"] = to_fix
    return report


def _yes(flag: bool, yes: str = "yes", no: str = "no") -> str:
    return yes if flag else no


def _cache_state(cache: dict, version: str, numba: str) -> str:
    total = cache["fresh"] + cache["stale"] + cache["absent"]
    compiled = f"{cache['fresh']} of {total} kernels compiled for edge_lbp {version} and Numba {numba}"
    return {"warm": f"warm: {compiled}",
            "partly warm": f"warm for the models run so far: {compiled} (the others compile when a model first "
                           "needs them)",
            "stale": f"stale: {cache['stale']} cached kernels were compiled from other sources or another Numba; "
                     "the next run recompiles them",
            "cold": "cold: nothing compiled yet; the first run compiles the kernels (about a minute on a 2-core x86 "
                    "VM, longer on a slower board), later runs load them"}[cache["state"]]


def format_report(report: dict) -> str:
    """The report as aligned lines, then the to-fix list."""
    board, cores, power, numba = report["board"], report["cores"], report["power"], report["numba"]
    sensors = "; ".join(
        f"{s['name']}: " + ("not found" if not s["found"] else
                            f"readable, {s['boundary']}" if s["readable"] else f"unreadable ({s['error']})")
        for s in report["sensors"])
    layer = numba["threading_layer"]
    blas = "; ".join(f"{p['internal_api']} {p['version']} ({p['threading_layer']}, {p['num_threads']} threads)"
                     for p in report["blas"] if p["user_api"] == "blas") or "none found"
    engines = "; ".join(f"{name}: {_yes(e['available'], 'available', 'missing')} ({e['detail']})"
                        for name, e in report["engines"].items())
    rows = [
        ("board", f"{board['model']} ({board['kind']}, {board['machine']})"
                  + (f", L4T {board['l4t']} / JetPack {board['jetpack']}" if board["l4t"] else "")),
        ("cores", f"{cores['logical']} logical, {cores['physical']} physical, {cores['online']} online; "
                  f"recommended threads {report['recommended_threads']}"),
        ("memory", f"{report['memory_bytes'] / 2**30:.1f} GiB"),
        ("power", f"{power['reader']}, boundary: {power['boundary']}"
                  + (f" (estimate: {power['source']})" if power["estimate"] else "")),
        ("sensors", sensors),
        ("cpufreq", f"{report['cpufreq']['cpus']} CPUs" if report["cpufreq"]["found"] else "not found"),
        ("thermal", ", ".join(report["thermal"]["zones"]) or "not found"),
        ("numba", f"{numba['version']}, {numba['threads']} threads, threading layer "
                  f"{layer['layer'] or 'unavailable (' + str(layer['error']) + ')'}"),
        ("numba cache", f"{numba['cache_dir']} ({_yes(numba['cache_writable'], 'writable', 'NOT writable')})"),
        ("kernels", _cache_state(numba["cache"], report["edge_lbp"], numba["version"])),
        *((name, str(value)) for name, value in report["thread_settings"].items()),
        ("BLAS", blas),
        ("engines", engines),
        ("export", f"available (torch {report['export']['torch']})" if report["export"]["available"]
                   else "not installed (workstation extra)"),
    ]
    lines = [f"edge-lbp {report['edge_lbp']} doctor (Python {report['python']})"]
    lines += [f"  {name:<16} {value}" for name, value in rows]
    lines.append("to fix:" if report["to_fix"] else "nothing to fix")
    lines += [f"  - {hint}" for hint in report["to_fix"]]
    return "\n".join(lines)


def add_parser(commands) -> None:
    cmd = commands.add_parser("doctor", help="what this machine offers: board, cores, sensors, Numba, engines")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.set_defaults(run=run)


def run(args) -> int:
    report = full_report()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    sys.stdout.flush()
    return ExitStatus.OK
