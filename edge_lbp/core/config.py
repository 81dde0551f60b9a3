"""Process-wide settings that must be in place before Numba compiles or starts threads."""
import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Numba's on-disk cache lives in the user's cache folder, never beside the installed sources, in a folder named
    by a digest of the engine's Numba sources. Numba checks a cached kernel against its own source file only, so a
    helper it compiled in from another file (``exp32`` from ``activation.py`` into the attention kernels, say)
    could change under it, by an upgrade or an edit, and the stale machine code would still be loaded."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge_lbp" / "numba" / sources_digest(_numba_source_roots())


def _numba_source_roots():
    import importlib.util

    return [Path(root) for package in ("edge_lbp.core", "edge_lbp.runtime")
            for root in importlib.util.find_spec(package).submodule_search_locations]


def sources_digest(roots) -> str:
    """A digest of the Python files under ``roots`` that use Numba (their paths and contents)."""
    import hashlib

    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            text = path.read_bytes()
            if b"numba" in text:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0" + text)
    return digest.hexdigest()[:16]


# How idle threads of the two pools wait; apply_process_settings says why, `edge-lbp doctor` reports other values.
THREAD_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "16"}


def apply_process_settings() -> None:
    """Settings Numba reads once per process, so they are made when ``edge_lbp`` is imported.

    - Numba's cache goes to ``NUMBA_CACHE_DIR`` if the user set it, else to :func:`default_cache_dir`.
    - OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless the user chose otherwise). The engine
      alternates Numba kernels and BLAS products; with GNU OpenMP's default spinning, Numba's idle threads keep
      the cores busy while BLAS runs and the other way round. Measured here on 2 cores (ViT-B fc1 backward, LBP
      lp-tri:4): 29 ms spinning, 11 ms passive; the exact GEMMs alone went from 32 to 28 ms.
    - OpenBLAS's idle threads spin for 2^16 cycles, not its default 2^28 (a tenth of a second), before they
      sleep (``OPENBLAS_THREAD_TIMEOUT=16`` unless the user chose otherwise): spinning, they held the other core
      through the Numba kernel after every product, which then ran as slowly at 2 threads as at 1. Measured on an
      Intel Xeon VM, 2 cores, DeiT-Ti/16 batch 8, 2 threads: 550 ms a step by default, 413 ms with 16 (440 with
      10, 466 with 20); the products themselves 2 % slower. OpenBLAS reads it when it loads: a program that
      imported numpy before ``edge_lbp`` keeps the default.
    """
    os.environ.setdefault("NUMBA_CACHE_DIR", str(default_cache_dir()))
    for name, value in THREAD_SETTINGS.items():
        os.environ.setdefault(name, value)
    import sys

    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None and not getattr(numba_config, "CACHE_DIR", ""):
        numba_config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


_MALLOC_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step (the numba engine calls this
    when it loads; True when applied).

    By default glibc serves every array above 32 MB (and, depending on what was freed before, smaller ones) with a
    fresh mmap and unmaps it when freed, so every step page-faults its large activations in again and the kernel
    zeroes them: 225 000 faults a step on DeiT-S/16 at batch 32. With mmap off and the heap never trimmed, a step
    reuses the previous step's memory: measured here, 3.66 -> 3.45 s a step on that model, 1.51 -> 1.46 s on
    ViT-B/16 at batch 4, with the same peak RSS (the step reaches it anyway). Memory the process frees is then
    kept until it exits. Skipped when the user set any MALLOC_* variable or GLIBC_TUNABLES, and where the C
    library has no mallopt (not glibc)."""
    if any(name in os.environ for name in _MALLOC_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def set_threads(threads=None) -> int:
    """One thread count for Numba's kernels and the BLAS library together (default: every core).

    The engine alternates between the two, so each gets all cores in turn rather than splitting them: two pools
    of the full size that run one after the other do not oversubscribe.
    """
    import numba
    from threadpoolctl import threadpool_limits

    count = int(numba.config.NUMBA_NUM_THREADS if threads is None else threads)
    if not 1 <= count <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads={threads}: this machine allows 1 to {numba.config.NUMBA_NUM_THREADS}")
    numba.set_num_threads(count)
    threadpool_limits(limits=count, user_api="blas")
    return count
