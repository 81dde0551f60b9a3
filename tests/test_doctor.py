"""``edge-lbp doctor``: runs on any machine, exits 0, names what is missing and how to fix it."""
import functools
import json
import os
import subprocess
import sys

import pytest

import edge_lbp.devices
from edge_lbp import cli
from edge_lbp.cli import doctor


@pytest.fixture
def bare_machine(tmp_path, monkeypatch):
    """An x86_64 machine with no sensor, cpufreq or thermal zone at all (an empty sysfs)."""
    monkeypatch.setattr(edge_lbp.devices, "device_report",
                        functools.partial(edge_lbp.devices.device_report, root=tmp_path, machine="x86_64"))
    return tmp_path


def test_cli_runs_here_and_exits_0():
    # A hang guard only: under the arm64 check's emulation, on a loaded machine, a start took over 120 s.
    result = subprocess.run([sys.executable, "-m", "edge_lbp", "doctor"], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr
    for row in ("board", "cores", "memory", "sensors", "numba", "threading layer", "numba cache", "engines"):
        assert row in result.stdout
    assert "to fix:" in result.stdout or "nothing to fix" in result.stdout


def test_names_the_missing_sensor_and_what_to_fix(bare_machine, capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "rapl: not found" in out and "cpufreq          not found" in out
    fixes = out.split("to fix:")[1]
    assert "no published power coefficients" in fixes and "cpufreq" in fixes and "thermal" in fixes


def test_json_parses_and_has_every_section(bare_machine, capsys):
    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["power"]["estimate"] and not any(s["found"] for s in report["sensors"])
    assert report["numba"]["version"] and report["numba"]["threading_layer"]["layer"]
    assert report["numba"]["cache"]["state"] in ("warm", "partly warm", "stale", "cold")
    assert report["engines"]["numba"]["available"]
    assert set(report["engines"]) == {"numba", "ort"} and "export" in report
    assert report["to_fix"]


def test_missing_engine_cache_and_omp_setting_are_reported(bare_machine, monkeypatch):
    blocker = bare_machine / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocker / "numba"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    monkeypatch.setattr(doctor.platform, "machine", lambda: "aarch64")
    report = doctor.full_report()
    assert not report["numba"]["cache_writable"]
    assert report["engines"]["ort"] == {"available": False, "detail": "onnxruntime-training has no wheels for aarch64"}
    fixes = " | ".join(report["to_fix"])
    assert "NUMBA_CACHE_DIR" in fixes and "OMP_WAIT_POLICY=ACTIVE" in fixes and "OPENBLAS_THREAD_TIMEOUT=28" in fixes
    assert "NOT writable" in doctor.format_report(report) and "OPENBLAS_THREAD_TIMEOUT" in doctor.format_report(report)


def test_the_ort_engine_is_looked_for_where_its_wheels_exist(monkeypatch):
    """macOS arm64 has onnxruntime-training-cpu wheels (universal2); Linux aarch64 has none."""
    monkeypatch.setattr(doctor.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(doctor.platform, "system", lambda: "Darwin")
    assert "no wheels" not in doctor._engines([])["ort"]["detail"]
    monkeypatch.setattr(doctor.platform, "system", lambda: "Linux")
    assert doctor._engines([])["ort"] == {"available": False, "detail": "onnxruntime-training has no wheels for arm64"}


def test_importing_edge_lbp_sets_how_idle_threads_wait_unless_the_user_did():
    from edge_lbp.core.config import THREAD_SETTINGS

    code = "import os, edge_lbp; print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k not in THREAD_SETTINGS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "16"]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OPENBLAS_THREAD_TIMEOUT": "28"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "28"]
