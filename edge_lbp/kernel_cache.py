"""Whether Numba's on-disk cache holds this engine's compiled kernels, and compiling them up front.

Numba compiles a ``cache=True`` kernel on its first call (tens of seconds for the engine on two cores, minutes on
a Pi 4) and writes an index file (``.nbi``) beside the machine code. On later runs it reuses them when the index
was written by the same Numba version and records the same stamp of the kernel's source file (a hash of the
installed source in Numba >= 0.60, modification time and size before). :func:`status` applies that test to every
kernel of the engine, reading the index files with ``pickletools`` (which decodes opcodes and never unpickles),
so a reinstalled or edited ``edge_lbp`` or another Numba shows as stale, exactly when Numba would recompile.
"""
from __future__ import annotations

import importlib
import os
import pickletools
import pkgutil
from pathlib import Path

# The modules that hold the engine's cached kernels (``runtime.kernels`` is searched for its sub-modules).
_MODULES = ("edge_lbp.core.wht_kernels",)
_PACKAGES = ("edge_lbp.runtime.kernels",)
FRESH, STALE, ABSENT = "fresh", "stale", "absent"


def kernels() -> list:
    """The engine's cached Numba kernels that are compiled on their own (inline helpers are compiled into their
    callers and have no cache files)."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    names = list(_MODULES)
    for package in _PACKAGES:
        path = importlib.import_module(package).__path__
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path)]
    found = []
    for name in names:
        module = importlib.import_module(name)
        found += [f for f in vars(module).values() if isinstance(f, Dispatcher) and f.__module__ == name
                  and not isinstance(f._cache, NullCache) and f.targetoptions.get("inline", "never") == "never"]
    return found


def _index_file(kernel):
    # Numba's own locator decides the path and the stamp (NUMBA_CACHE_DIR, or beside the sources).
    return kernel._cache._cache_file


def _pickle_args(stream):
    """The literal arguments of one pickle's opcodes, in order (strings, bytes, numbers), and whether it adds any
    dictionary item; decoded without unpickling."""
    args, items = [], False
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("SETITEM", "SETITEMS"):
            items = True
        elif op.name not in ("PROTO", "FRAME") and isinstance(arg, (str, bytes, int, float)):
            args.append(arg)
        if op.name == "STOP":
            break
    return args, items


def _flatten(stamp):
    return [v for part in stamp for v in _flatten(part)] if isinstance(stamp, tuple) else [stamp]


def kernel_state(kernel) -> str:
    """``fresh`` when Numba would load this kernel from its cache, ``stale`` when an index exists but Numba would
    recompile (another Numba version or other sources), ``absent`` when it was never compiled here."""
    index = _index_file(kernel)
    try:
        with open(index._index_path, "rb") as stream:
            version, _ = _pickle_args(stream)
            data, has_overloads = _pickle_args(stream)
    except FileNotFoundError:
        return ABSENT
    except Exception:  # truncated or foreign bytes: Numba would not use it either
        return STALE
    stamp = _flatten(index._source_stamp)
    fresh = version == [index._version] and data[:len(stamp)] == stamp and has_overloads
    return FRESH if fresh else STALE


def status() -> dict:
    """``{"state": "warm" | "partly warm" | "stale" | "cold", "cache_dir", "fresh", "stale", "absent",
    "kernels"}``: warm when every kernel is fresh; a model that needs only some of them leaves the rest absent."""
    import numba

    states = {f"{k.__module__}.{k.__name__}": kernel_state(k) for k in kernels()}
    counts = {s: sum(v == s for v in states.values()) for s in (FRESH, STALE, ABSENT)}
    if counts[STALE]:
        state = "stale"
    elif not counts[FRESH]:
        state = "cold"
    else:
        state = "warm" if not counts[ABSENT] else "partly warm"
    cache_dir = str(numba.config.CACHE_DIR or "") or os.environ.get("NUMBA_CACHE_DIR")  # what Numba uses
    return {"state": state, "cache_dir": cache_dir or None, **counts, "kernels": states}


def compiled_since(started: float) -> int:
    """How many kernels' index files were (re)written since ``started`` (a ``time.time()``): those Numba compiled."""
    count = 0
    for kernel in kernels():
        path = Path(_index_file(kernel)._index_path)
        count += path.is_file() and path.stat().st_mtime >= started
    return count


def warm_up(artifact_dir, threads=None) -> None:
    """Compile (or load from the cache) every kernel a training step and an evaluation of this artifact use, on a
    throw-away session and a batch of two zero images: Numba compiles per argument type, not per shape."""
    import numpy as np

    import edge_lbp
    from edge_lbp.core.artifact import model_input

    session = edge_lbp.load(artifact_dir, "numba", threads=threads)
    shape = [2] + model_input(session.artifact.manifest)["shape"][1:]
    images = np.zeros(shape, np.float32)
    session.eval_step(images)
    session.train_step(images, np.zeros(2, np.int64))
