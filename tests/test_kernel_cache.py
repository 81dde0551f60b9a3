"""Whether Numba's cache is warm: Numba's own freshness test (its version, the source's stamp) on the index files,
checked against Numba itself with a cold, a warm and an outdated cache folder."""
import json
import os
import subprocess
import sys
import textwrap

KERNEL = textwrap.dedent("""
    from numba import njit

    @njit(cache=True)
    def add_one(x):
        return x + 1
""")

PROBE = textwrap.dedent("""
    import edge_lbp
    from edge_lbp import kernel_cache
    import kern
    before = kernel_cache.kernel_state(kern.add_one)
    kern.add_one(1.0)
    print(before, kernel_cache.kernel_state(kern.add_one), kern.add_one.stats.cache_hits != {})
""")


def _run(code, cache, cwd):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(cwd)}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def test_a_kernel_is_absent_then_fresh_then_stale_after_its_source_changes(tmp_path):
    (tmp_path / "kern.py").write_text(KERNEL)
    cache = tmp_path / "cache"
    # before the first call: no index; after it Numba wrote one (compiled, not a cache hit)
    assert _run(PROBE, cache, cwd=tmp_path) == ["absent", "fresh", "False"]
    # a new process: fresh before the call, and Numba agrees (it loads the kernel from the cache)
    assert _run(PROBE, cache, cwd=tmp_path) == ["fresh", "fresh", "True"]
    (tmp_path / "kern.py").write_text(KERNEL.replace("x + 1", "x + 1  # edited"))
    # edited source: stale, and Numba recompiles (no cache hit), leaving a fresh index
    assert _run(PROBE, cache, cwd=tmp_path) == ["stale", "fresh", "False"]


def test_an_index_from_another_numba_is_stale(tmp_path):
    (tmp_path / "kern.py").write_text(KERNEL)
    cache = tmp_path / "cache"
    _run(PROBE, cache, cwd=tmp_path)
    (index,) = cache.rglob("*.nbi")
    import numba

    version = numba.__version__.encode()  # the first pickle in the index; same length keeps the framing valid
    index.write_bytes(index.read_bytes().replace(version, b"9" * len(version), 1))
    assert _run(PROBE, cache, cwd=tmp_path) == ["stale", "fresh", "False"]


def test_the_engine_cache_is_cold_in_an_empty_folder(tmp_path):
    code = "import json; from edge_lbp import kernel_cache; print(json.dumps(kernel_cache.status()))"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "cold" and status["cache_dir"] == str(tmp_path)
    assert status["fresh"] == status["stale"] == 0 and status["absent"] == len(status["kernels"]) >= 10
    assert "edge_lbp.core.wht_kernels.project_grid" in status["kernels"]
    assert not any(name.endswith("_reflect") for name in status["kernels"])  # inline helpers have no cache files


HELPER = textwrap.dedent("""
    from numba import njit

    @njit(inline="always")
    def step(x):
        return x + 1
""")
CALLER = textwrap.dedent("""
    from numba import njit
    from helper import step

    @njit(cache=True)
    def add(x):
        return step(x)
""")


def test_a_cache_folder_per_digest_of_the_sources_catches_an_edited_helper(tmp_path):
    """Numba checks a cached kernel against its own file only: a helper compiled into it from another file can
    change and the old machine code still loads. The engine's default cache folder is named by a digest of every
    Numba source (edge_lbp.core.config.default_cache_dir), so an edited helper gets a new folder."""
    from edge_lbp.core.config import sources_digest

    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "caller.py").write_text(CALLER)
    (tmp_path / "notes.py").write_text("NOTHING = 'compiled here'\n")
    code = "import caller; print(caller.add(1.0))"
    shared = tmp_path / "cache"
    first = sources_digest([tmp_path])
    assert _run(code, shared, tmp_path) == ["2.0"] and _run(code, tmp_path / first, tmp_path) == ["2.0"]
    (tmp_path / "notes.py").write_text("NOTHING = 'edited, and no Numba in it'\n")
    assert sources_digest([tmp_path]) == first
    (tmp_path / "helper.py").write_text(HELPER.replace("x + 1", "x + 2"))
    assert _run(code, shared, tmp_path) == ["2.0"]  # stale: the hazard
    second = sources_digest([tmp_path])
    assert second != first and _run(code, tmp_path / second, tmp_path) == ["3.0"]


def test_the_default_cache_folder_is_named_by_the_engines_sources(tmp_path):
    code = "import os, edge_lbp; print(os.environ['NUMBA_CACHE_DIR'])"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    result = subprocess.run([sys.executable, "-c", code], env={**env, "XDG_CACHE_HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=300, check=True)
    folder = result.stdout.strip()
    assert os.path.dirname(folder) == str(tmp_path / "edge_lbp" / "numba")
    assert len(os.path.basename(folder)) == 16 and int(os.path.basename(folder), 16) >= 0
