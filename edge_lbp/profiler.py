"""Profiling of training steps: latency per step, phase and op type, peak memory and CPU use per phase, energy.

``with Profiler(session) as prof: prof.step(x, y)`` (or :func:`profile`), then ``prof.report()`` (a dict) and
``prof.write(folder)`` (``report.json``, ``trace.json`` for Perfetto, ``figure.html``). The engine fills the
per-node trace itself; the profiler only reads a clock, the process CPU time and the memory high-water mark at
phase boundaries (a few µs each) and does all aggregation after the steps.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import psutil

from edge_lbp.devices import PowerSampler, energy_in_window
from edge_lbp.memory import PeakMemory

SCHEMA = "edge_lbp.profile/1"


@dataclass
class StepRecord:
    """One measured step: perf_counter times, loss, batch size, the engine's spans ``(phase, op_type, node, start,
    end)`` and the boundary marks ``(phase that ended, time, process CPU seconds, peak RSS bytes)``."""

    start: float
    end: float
    loss: float
    batch: int
    spans: List[Tuple[str, str, str, float, float]]
    marks: List[Tuple[str, float, float, int]] = field(default_factory=list)


# CPU seconds of every thread of the process at ns resolution (os.times counts 10 ms ticks: too coarse for a phase).
_cpu_seconds = time.process_time


def _busy_and_total(times) -> Tuple[float, float]:
    """System-wide CPU seconds (busy, total) from psutil.cpu_times(); Linux counts guest time inside user/nice
    as well, so it is taken out of the total (as psutil.cpu_percent does)."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def _batch_size(inputs) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    return int(np.shape(first)[0])


def _stats_ms(values_s: List[float]) -> dict:
    values = np.asarray(values_s) * 1e3
    return {"median_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90))}


class Profiler:
    """Measures the training steps run through :meth:`step` inside its ``with`` block.

    ``sampler``: a :class:`~edge_lbp.devices.PowerSampler` (default: one on this board's best power source at
    ``rate_hz``); the profiler starts it on entry and stops it on exit. Its clock must be ``time.perf_counter``,
    the engine's, so that power and op spans share one time line.
    """

    def __init__(self, session, *, sampler: Optional[PowerSampler] = None, rate_hz: float = 10.0):
        self.session = session
        self.sampler = sampler or PowerSampler(rate_hz=rate_hz)
        if self.sampler.clock is not time.perf_counter:
            raise ValueError("the sampler's clock must be time.perf_counter, the clock of the engine's trace")
        self.records: List[StepRecord] = []
        self._memory: Optional[PeakMemory] = None
        self._memory_kind: dict = {}
        self._marks: Optional[list] = None  # the boundary marks of the step being measured, else None
        self._cpu: Dict[str, tuple] = {}  # "start" (first measured step), "end" (exit): time, process, system

    # -- measuring ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "Profiler":
        self.sampler.start()
        self._memory = PeakMemory()
        self._memory_kind = {"method": self._memory.method, "is_peak": self._memory.is_peak}
        return self

    def __exit__(self, *exc) -> None:
        # System-wide CPU times come from /proc/stat (~80 µs right after a step): read at the ends only.
        self._cpu["end"] = (time.perf_counter(), _cpu_seconds(), psutil.cpu_times())
        self.sampler.stop()
        self._memory.close()
        self._memory = None

    def _mark(self, phase: str) -> None:
        memory = self._memory
        self._marks.append((phase, time.perf_counter(), _cpu_seconds(), memory.peak()))
        memory.reset()

    def step(self, inputs, labels) -> float:
        """One measured training step (forward, backward, optimizer); returns the loss."""
        if self._memory is None:
            raise RuntimeError("Profiler.step runs inside `with Profiler(session) as prof:`")
        spans: list = []
        self._marks = marks = []
        if not self.records:
            self._cpu["start"] = (time.perf_counter(), _cpu_seconds(), psutil.cpu_times())
        self._memory.reset()
        start, cpu = time.perf_counter(), _cpu_seconds()
        try:
            # Where the engine runs forward and backward as one graph call, its memory peaks and CPU use would
            # merge: the engine's forward-end hook puts a boundary mark between them.
            loss = self.session.forward_backward(inputs, labels, trace=spans,
                                                 on_forward_end=lambda: self._mark("forward"))
            self._mark("backward" if marks else "forward_backward")
            self.session.optimizer.step(trace=spans)
            self._mark("optimizer")
        finally:
            self._marks = None
        end = marks[-1][1]
        self.records.append(StepRecord(start, end, loss, _batch_size(inputs), spans, [("", start, cpu, 0)] + marks))
        return loss

    # -- reporting ---------------------------------------------------------------------------------------------
    def report(self) -> dict:
        """Everything measured, as a JSON-serialisable dict (see the README for the fields)."""
        records = self.records
        if not records:
            raise RuntimeError("no measured steps: call Profiler.step inside the with block")
        step_s = [r.end - r.start for r in records]
        batch = statistics.median_low([r.batch for r in records])
        median_step = float(np.median(step_s))
        return {
            "schema": SCHEMA,
            "artifact": str(self.session.artifact.folder),
            "engine": self.session.engine,
            "batch_size": batch,
            "steps": len(records),
            "step": {**_stats_ms(step_s), "min_ms": min(step_s) * 1e3, "max_ms": max(step_s) * 1e3},
            "samples_per_s": batch / median_step,
            "phases": self._phases(median_step),
            "memory": {**self._memory_kind,
                       "peak_rss_bytes": max(m[3] for r in records for m in r.marks)},
            "ops": self._ops(),
            "cpu": self._cpu_report(),
            "energy": self._energy(),
            "sensors": self._sensors(),
            "losses": [r.loss for r in records],
        }

    def _phases(self, median_step: float) -> dict:
        per_step: Dict[str, List[float]] = {}
        for index, record in enumerate(self.records):
            for phase, _, _, start, end in record.spans:
                times = per_step.setdefault(phase, [0.0] * len(self.records))
                times[index] += end - start
        # Memory and CPU come from the boundary marks: each mark closes the phase it names.
        peak: Dict[str, int] = {}
        wall: Dict[str, float] = {}
        cpu: Dict[str, float] = {}
        for record in self.records:
            for (_, t0, c0, _), (phase, t1, c1, rss) in zip(record.marks, record.marks[1:]):
                peak[phase] = max(peak.get(phase, 0), rss)
                wall[phase] = wall.get(phase, 0.0) + t1 - t0
                cpu[phase] = cpu.get(phase, 0.0) + c1 - c0
        return {
            phase: {**_stats_ms(times), "share_of_step": float(np.median(times)) / median_step,
                    "peak_rss_bytes": peak.get(phase),
                    "cpu_cores": cpu[phase] / wall[phase] if wall.get(phase) else None}
            for phase, times in per_step.items()
        }

    def _ops(self) -> List[dict]:
        """Per (op type, phase): time per step (all its nodes together), median and p90 over steps."""
        steps = len(self.records)
        totals: Dict[Tuple[str, str], List[float]] = {}
        counts: Dict[Tuple[str, str], int] = {}
        for index, record in enumerate(self.records):
            for phase, op, _, start, end in record.spans:
                totals.setdefault((op, phase), [0.0] * steps)[index] += end - start
                counts[op, phase] = counts.get((op, phase), 0) + 1
        rows = [{"op_type": op, "phase": phase, "nodes_per_step": counts[op, phase] / steps, **_stats_ms(times)}
                for (op, phase), times in totals.items()]
        return sorted(rows, key=lambda row: -row["median_ms"])

    def _cpu_report(self) -> dict:
        """Utilisation from the first measured step to the end of the block (or now, inside the block)."""
        end = self._cpu.get("end") or (time.perf_counter(), _cpu_seconds(), psutil.cpu_times())
        (t0, proc0, sys0), (t1, proc1, sys1) = self._cpu["start"], end
        cores = psutil.cpu_count() or 1
        # CPU time is counted in clock ticks (10 ms on Linux) per thread: over a short window the quotient can
        # land above the core count, which no process can use.
        process_cores = min((proc1 - proc0) / (t1 - t0), cores)
        (busy0, total0), (busy1, total1) = _busy_and_total(sys0), _busy_and_total(sys1)
        return {
            "window_s": t1 - t0,
            "logical_cores": cores,
            "process_cores": process_cores,  # average number of busy cores used by this process
            "process_percent": 100.0 * process_cores / cores,
            "system_percent": 100.0 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else None,
        }

    def _energy(self) -> dict:
        """Energy over the measured window (first step start to last step end), divided evenly over its steps."""
        window = energy_in_window(self.sampler.samples, self.records[0].start, self.records[-1].end)
        samples = sum(r.batch for r in self.records)
        joules = window.joules
        if joules is None:
            status = "unknown"
        else:
            status = "estimate" if window.estimate else "measured"
        return {
            "status": status,
            "joules": joules,
            "per_step_j": joules / len(self.records) if joules is not None else None,
            "per_sample_j": joules / samples if joules is not None else None,
            "mean_watts": window.mean_watts,
            "window_s": window.seconds,
            "boundary": window.boundary,
            "source": window.source,
            "estimate": window.estimate,
            "power_samples": window.samples,
            "gaps": window.gaps,
        }

    def _sensors(self) -> dict:
        samples = self.sampler.samples
        temps = [s.max_temp_c for s in samples if s.max_temp_c is not None]
        freqs = [s.mean_freq_mhz for s in samples if s.mean_freq_mhz is not None]
        return {
            "board": self.sampler.board.model,
            "power_reader": self.sampler.reader.name,
            "rate_hz": 1.0 / self.sampler.period,
            "samples": len(samples),
            "temperature_c_max": max(temps, default=None),
            "freq_mhz_mean": float(np.mean(freqs)) if freqs else None,
        }

    def write(self, out_dir) -> Dict[str, Path]:
        """Write ``report.json``, ``trace.json`` (Chrome trace, opens in Perfetto) and ``figure.html``."""
        from edge_lbp.profile_report import chrome_trace, figure_html

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = self.report()
        paths = {"report": out / "report.json", "trace": out / "trace.json", "figure": out / "figure.html"}
        paths["report"].write_text(json.dumps(report, indent=1), encoding="utf-8")
        samples = self.sampler.samples
        paths["trace"].write_text(json.dumps(chrome_trace(self.records, samples, engine=self.session.engine)),
                                  encoding="utf-8")
        paths["figure"].write_text(figure_html(report, self.records, samples), encoding="utf-8")
        return paths


def profile(session, batches: Iterable, *, steps: int = 10, warmup: int = 3,
            sampler: Optional[PowerSampler] = None, rate_hz: float = 10.0) -> Profiler:
    """Run ``warmup`` unmeasured steps, then ``steps`` measured ones, taking ``(inputs, labels)`` from ``batches``."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    batches = iter(batches)

    def next_batch():
        try:
            return next(batches)
        except StopIteration:
            raise ValueError(f"the data ran out before {warmup} warm-up + {steps} measured steps") from None

    for _ in range(warmup):
        session.train_step(*next_batch())
    with Profiler(session, sampler=sampler, rate_hz=rate_hz) as prof:
        for _ in range(steps):
            prof.step(*next_batch())
    return prof
