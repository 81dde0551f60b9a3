"""The profiler on a real (tiny) artifact: report consistency, Chrome trace, figure, energy, CLI."""
import json
import mmap
import time

import numpy as np
import pytest
import edge_lbp
from edge_lbp import cli
from edge_lbp.devices import EstimateReader, ExternalMeter, PowerSampler
from edge_lbp.methods import export_model
from edge_lbp.memory import PeakMemory
from edge_lbp.data import random_batches
from edge_lbp.profiler import Profiler, profile
from fake_device import board, make_tree

WATTS, BATCH, STEPS = 7.5, 8, 4
CPUFREQ = "sys/devices/system/cpu/cpu{}/cpufreq/scaling_cur_freq"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    pytest.importorskip("torch", reason="the export extra is not installed (this artifact is exported here)")
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed (exported here)")
    folder = tmp_path_factory.mktemp("vit-tiny")
    export_model("vit-tiny", folder)
    return folder


@pytest.fixture(scope="module")
def sensors_root(tmp_path_factory):
    """A fake sysfs with two CPUs' frequency and one thermal zone, for the counter tracks."""
    return make_tree(tmp_path_factory.mktemp("sys"), {
        CPUFREQ.format(0): "1500000\n", CPUFREQ.format(1): "1800000\n",
        "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n", "sys/class/thermal/thermal_zone0/temp": "47500\n"})


def meter_sampler(root, watts=WATTS):
    return PowerSampler(ExternalMeter(watts), board=board("rpi4"), root=root, rate_hz=50)


@pytest.fixture(scope="module")
def profiled(artifact, sensors_root, tmp_path_factory):
    session = edge_lbp.load(artifact, "numba")
    batches = random_batches(session.artifact.manifest, BATCH)
    prof = profile(session, batches, steps=STEPS, warmup=1, sampler=meter_sampler(sensors_root))
    paths = prof.write(tmp_path_factory.mktemp("profile"))
    return prof, prof.report(), paths


def test_report_is_consistent(profiled):
    prof, report, _ = profiled
    assert report["engine"] == "numba" and report["steps"] == STEPS and report["batch_size"] == BATCH
    step = report["step"]
    assert 0 < step["min_ms"] <= step["median_ms"] <= step["p90_ms"] <= step["max_ms"]
    phases = report["phases"]
    assert set(phases) == {"forward", "backward", "optimizer"}
    # Bounds that hold however busy the machine is (its load only stretches the glue between nodes): every span lies
    # inside its step, the nodes run one at a time, and each phase's median is that of its spans' sums per step.
    per_phase = {}
    for record in prof.records:
        spans = sorted((start, end) for *_, start, end in record.spans)
        assert all(record.start <= start <= end <= record.end for start, end in spans)
        assert all(end <= following for (_, end), (following, _) in zip(spans, spans[1:]))
        for name in phases:
            per_phase.setdefault(name, []).append(sum(e - s for p, *_, s, e in record.spans if p == name))
    for name, times in per_phase.items():
        assert phases[name]["median_ms"] == pytest.approx(1e3 * float(np.median(times)))
    assert report["samples_per_s"] == pytest.approx(BATCH / (step["median_ms"] / 1e3))
    assert len(report["losses"]) == STEPS and all(np.isfinite(report["losses"]))


def test_op_table_covers_the_lbp_ops(profiled):
    prof, report, _ = profiled
    ops = {(row["op_type"], row["phase"]): row for row in report["ops"]}
    assert ("WHTMatMulGradAccumulate", "backward") in ops and ("WHTProject", "forward") in ops
    medians = [row["median_ms"] for row in report["ops"]]
    assert medians == sorted(medians, reverse=True)
    # In every step the op types add up to the phase: the same spans, grouped differently. (Checked per step: a sum
    # of medians over noisy steps is not the median of the sums.)
    phase_ms = {p: [] for p in report["phases"]}
    op_ms = {key: [] for key in ops}
    for record in prof.records:
        spans = record.spans
        for phase in phase_ms:
            phase_ms[phase].append(1e3 * sum(e - s for ph, _, _, s, e in spans if ph == phase))
        for op, phase in op_ms:
            op_ms[op, phase].append(1e3 * sum(e - s for ph, o, _, s, e in spans if ph == phase and o == op))
    for step in range(len(prof.records)):
        backward_ops = sum(times[step] for (_, phase), times in op_ms.items() if phase == "backward")
        assert backward_ops == pytest.approx(phase_ms["backward"][step], rel=1e-9)
    for key, row in ops.items():
        assert row["median_ms"] == pytest.approx(float(np.median(op_ms[key])), rel=1e-9)
    assert report["phases"]["backward"]["median_ms"] == pytest.approx(float(np.median(phase_ms["backward"])))


def test_memory_and_cpu_per_phase(profiled):
    _, report, _ = profiled
    memory = report["memory"]
    assert memory["is_peak"], memory["method"]  # Linux: VmHWM can be reset
    peaks = [p["peak_rss_bytes"] for p in report["phases"].values()]
    assert all(p > 10 << 20 for p in peaks) and memory["peak_rss_bytes"] == max(peaks)
    cpu = report["cpu"]
    assert 0 < cpu["process_cores"] <= cpu["logical_cores"] + 0.1
    assert 0 <= cpu["system_percent"] <= 100
    assert all(p["cpu_cores"] >= 0 for p in report["phases"].values())


def test_peak_memory_sees_a_freed_allocation():
    memory = PeakMemory()
    try:
        if not memory.is_peak:
            pytest.skip(memory.method)
        memory.reset()
        before = memory.peak()
        # An anonymous mapping, written so resident, then unmapped: freed memory leaves the process whatever the
        # allocator's policy (the numba engine makes malloc keep freed memory).
        block = mmap.mmap(-1, 64 << 20)
        for _ in range(64):
            block.write(b"\1" * (1 << 20))
        block.close()
        assert memory.peak() >= before + (60 << 20)
        memory.reset()
        assert memory.peak() < before + (60 << 20)
    finally:
        memory.close()


def test_energy_from_a_constant_meter(profiled):
    prof, report, _ = profiled
    energy = report["energy"]
    window = prof.records[-1].end - prof.records[0].start
    assert energy["status"] == "measured" and not energy["estimate"]
    assert energy["window_s"] == pytest.approx(window, rel=1e-6)
    assert energy["joules"] == pytest.approx(WATTS * window, rel=0.02)
    assert energy["per_step_j"] == pytest.approx(energy["joules"] / STEPS)
    assert energy["per_sample_j"] == pytest.approx(energy["joules"] / (STEPS * BATCH))
    assert energy["boundary"] == "wall (external meter)"
    assert report["sensors"]["temperature_c_max"] == 47.5 and report["sensors"]["freq_mhz_mean"] == 1650


def test_energy_without_power_data_is_unknown(artifact, tmp_path):
    session = edge_lbp.load(artifact, "numba")
    sampler = PowerSampler(EstimateReader(None, cpu_percent=lambda: 50.0), board=board("generic"), root=tmp_path)
    prof = profile(session, random_batches(session.artifact.manifest, 2), steps=1, warmup=0, sampler=sampler)
    energy = prof.report()["energy"]
    assert energy["status"] == "unknown" and energy["joules"] is None and energy["per_sample_j"] is None
    assert energy["estimate"] and "no published power coefficients" in energy["source"]


def test_chrome_trace(profiled):
    prof, report, paths = profiled
    trace = json.loads(paths["trace"].read_text())
    events = trace["traceEvents"]
    assert all({"ph", "ts", "pid", "name"} <= set(e) for e in events)
    timed = [e for e in events if e["ph"] != "M"]
    assert [e["ts"] for e in timed] == sorted(e["ts"] for e in timed)
    ops = [e for e in timed if e["ph"] == "X" and e["cat"] != "step"]
    assert len(ops) == sum(len(r.spans) for r in prof.records) and all(e["dur"] >= 0 for e in ops)
    assert {e["name"] for e in ops} == {row["op_type"] for row in report["ops"]}
    counters = {}
    for e in timed:
        if e["ph"] == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values())
            counters.setdefault(e["name"], []).append(e)
    assert {"power (W)", "CPU frequency (MHz)", "temperature (°C)", "peak RSS (MiB)"} <= set(counters)
    assert counters["CPU frequency (MHz)"][0]["args"] == {"cpu0": 1500.0, "cpu1": 1800.0}
    # Same clock: the sampler ran from before the first step to after the last one.
    steps = [e for e in timed if e.get("cat") == "step"]
    power = [e["ts"] for e in counters["power (W)"]]
    assert min(power) <= steps[0]["ts"] and max(power) >= steps[-1]["ts"] + steps[-1]["dur"]
    first = prof.records[0]
    assert steps[0]["dur"] == pytest.approx((first.end - first.start) * 1e6, abs=1)


def test_figure_is_self_contained(profiled):
    _, _, paths = profiled
    page = paths["figure"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<polyline" in page  # a power line
    assert "<script" not in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "WHTMatMulGrad" in page


def test_ort_engine_has_coarse_phases(artifact, sensors_root):
    pytest.importorskip("onnxruntime.training")
    session = edge_lbp.load(artifact, "ort")
    prof = profile(session, random_batches(session.artifact.manifest, 4), steps=2, warmup=1,
                   sampler=meter_sampler(sensors_root))
    report = prof.report()
    assert set(report["phases"]) == {"forward_backward", "optimizer"}
    assert all(p["peak_rss_bytes"] > 0 for p in report["phases"].values())


def test_session_is_left_as_it_was_and_misuse_is_refused(artifact, sensors_root):
    session = edge_lbp.load(artifact, "numba")
    steps = list(session.training.steps)
    x, y = next(random_batches(session.artifact.manifest, 2))
    with Profiler(session, sampler=meter_sampler(sensors_root)) as prof:
        prof.step(x, y)
    assert session.training.steps == steps  # the phase mark comes through the session's hook, not a patched graph
    with pytest.raises(RuntimeError, match="inside"):
        prof.step(x, y)
    clocked = PowerSampler(ExternalMeter(1.0), board=board("rpi4"), root=sensors_root, clock=time.monotonic)
    with pytest.raises(ValueError, match="perf_counter"):
        Profiler(session, sampler=clocked)


def test_cli_writes_the_three_files(artifact, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["profile", str(artifact), "--steps", "2", "--warmup", "1", "--batch-size", "4",
                     "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["batch_size"] == 4 and report["energy"]["status"]
    assert json.loads((out / "trace.json").read_text())["traceEvents"]
    assert (out / "figure.html").stat().st_size > 1000
    assert "samples/s" in capsys.readouterr().out


def test_cli_profiles_an_npz_over_several_epochs(artifact, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), y_train=np.arange(6) % 10)
    out = tmp_path / "out"
    # 6 samples in batches of 4: one full batch per epoch, so 3 steps need 3 epochs (the 2-sample rest is skipped).
    assert cli.main(["profile", str(artifact), "--data", str(data), "--steps", "2", "--warmup", "1",
                     "--batch-size", "4", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["batch_size"] == 4
    assert cli.main(["profile", str(artifact), "--data", str(data), "--batch-size", "8", "--out", str(out)]) == 2
