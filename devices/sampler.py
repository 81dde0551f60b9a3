"""Background sampling of power, CPU frequency and temperature, and energy over a time window."""
from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edge_lbp.devices._sysfs import PathLike, ReadText, SensorError, notify
from edge_lbp.devices.boards import BoardProfile, detect_board
from edge_lbp.devices.choose import describe_fallback, open_power_reader
from edge_lbp.devices.cpustate import CpuStateReader
from edge_lbp.devices.power import EstimateReader, PowerReader, PowerReading
from edge_lbp.devices.sensors import Runner

Clock = Callable[[], float]


@dataclass(frozen=True)
class Sample:
    t: float  # seconds on the sampler's clock (time.perf_counter unless one was passed in)
    power: PowerReading
    freq_mhz: Mapping[int, float] = field(default_factory=dict)
    temp_c: Mapping[str, float] = field(default_factory=dict)

    @property
    def max_temp_c(self) -> Optional[float]:
        return max(self.temp_c.values(), default=None)

    @property
    def mean_freq_mhz(self) -> Optional[float]:
        return sum(self.freq_mhz.values()) / len(self.freq_mhz) if self.freq_mhz else None


@dataclass(frozen=True)
class EnergyReport:
    joules: Optional[float]  # None when the window holds no power data at all
    seconds: float
    mean_watts: Optional[float]
    boundary: str
    source: str
    estimate: bool
    samples: int
    gaps: int  # intervals with no usable power (sensor switch or counter reset); they add no energy


def counter_delta(previous: int, current: int, wrap_range: Optional[int]) -> Optional[int]:
    """Increase of a cumulative counter. A decrease means one wrap at ``wrap_range`` (the sampler runs far more
    often than RAPL wraps, minutes at full load); without a range it means a reset and the increase is unknown."""
    if current >= previous:
        return current - previous
    return current + wrap_range - previous if wrap_range else None


def interval_energy(a: Sample, b: Sample) -> Optional[float]:
    """Joules between consecutive samples: counter differences when both carry the same counters, else the
    trapezoid on power; None when neither applies."""
    ca, cb = a.power.counters, b.power.counters
    if ca and ca.keys() == cb.keys():
        deltas = [counter_delta(ca[name][0], cb[name][0], cb[name][1]) for name in ca]
        return None if None in deltas else sum(deltas) / 1e6
    if a.power.watts is not None and b.power.watts is not None:
        return 0.5 * (a.power.watts + b.power.watts) * (b.t - a.t)
    return None


def cumulative_energy(samples: Sequence[Sample]) -> Tuple[np.ndarray, np.ndarray, List[bool]]:
    """Sample times, energy in J accumulated since the first sample, and which intervals were gaps."""
    times = np.array([s.t for s in samples], dtype=float)
    joules = np.zeros(len(samples))
    gaps = []
    for i in range(1, len(samples)):
        step = interval_energy(samples[i - 1], samples[i])
        gaps.append(step is None)
        joules[i] = joules[i - 1] + (step or 0.0)
    return times, joules, gaps


def _report(inside: Sequence[Sample], joules: Optional[float], seconds: float, gaps: int) -> EnergyReport:
    def unique(values) -> str:
        return "; ".join(dict.fromkeys(values))

    return EnergyReport(
        joules=joules,
        seconds=seconds,
        mean_watts=joules / seconds if joules is not None and seconds > 0 else None,
        boundary=unique(s.power.boundary for s in inside),
        source=unique(s.power.source for s in inside),
        estimate=any(s.power.estimate for s in inside),
        samples=len(inside),
        gaps=gaps,
    )


def energy_in_window(samples: Sequence[Sample], t0: Optional[float] = None, t1: Optional[float] = None) -> EnergyReport:
    """Energy between ``t0`` and ``t1`` (default: the first and last sample), interpolating the cumulative energy
    linearly at window edges that fall between samples. The window is clipped to the sampled span."""
    if len(samples) < 2:
        return _report(samples, None, 0.0, 0)
    times, joules, gaps = cumulative_energy(samples)
    start = times[0] if t0 is None else min(max(t0, times[0]), times[-1])
    end = times[-1] if t1 is None else min(max(t1, start), times[-1])
    lo = max(0, bisect.bisect_right(times, start) - 1)
    hi = min(len(samples), bisect.bisect_left(times, end) + 1)
    intervals = gaps[lo : hi - 1]
    energy = float(np.interp(end, times, joules) - np.interp(start, times, joules))
    if intervals and all(intervals):  # nothing but gaps: no figure rather than a false zero
        energy = None
    return _report(samples[lo:hi], energy, float(end - start), sum(intervals))


def power_series(samples: Sequence[Sample]) -> List[Tuple[float, Optional[float]]]:
    """``(t, watts)`` per sample, for trace counters; counter-only readings get the mean power since the
    previous sample."""
    times, joules, _ = cumulative_energy(samples)
    series = []
    for i, sample in enumerate(samples):
        watts = sample.power.watts
        if watts is None and sample.power.counters and i and times[i] > times[i - 1]:
            watts = float((joules[i] - joules[i - 1]) / (times[i] - times[i - 1]))
        series.append((sample.t, watts))
    return series


class PowerSampler:
    """Samples power, CPU frequency and temperature at ``rate_hz`` on a background thread (``start``/``stop`` or
    ``with``); :meth:`sample` takes one sample on the caller's thread, which is what deterministic tests use.

    If the reader fails mid-run, a one-line notice is emitted and the CPU-utilisation estimate takes over.
    """

    def __init__(
        self,
        reader: Optional[PowerReader] = None,
        *,
        board: Optional[BoardProfile] = None,
        rate_hz: float = 10.0,
        clock: Clock = time.perf_counter,
        root: PathLike = "/",
        read_text: Optional[ReadText] = None,
        runner: Optional[Runner] = None,
        cpu_percent: Optional[Callable[[], float]] = None,
    ):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        board = board or detect_board(root, read_text=read_text)
        self.board = board
        self.reader = reader or open_power_reader(
            board, root=root, read_text=read_text, runner=runner, cpu_percent=cpu_percent
        )
        self.fallback = EstimateReader(board.power_model, cpu_percent)
        self.cpu = CpuStateReader(root, read_text=read_text)
        self.clock = clock
        self.period = 1.0 / rate_hz
        self._samples: List[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _read_power(self) -> PowerReading:
        try:
            return self.reader.read()
        except SensorError as err:
            if self.reader is self.fallback:
                raise
            notify(f"{err}; {describe_fallback(self.fallback)} from now on")
            self.reader = self.fallback
            return self.reader.read()

    def sample(self) -> Sample:
        t = self.clock()
        sample = Sample(t, self._read_power(), self.cpu.cpu_freqs_mhz(), self.cpu.temperatures_c())
        with self._lock:
            self._samples.append(sample)
        return sample

    def _run(self) -> None:
        deadline = time.perf_counter()
        while True:
            self.sample()
            # Deadlines, not fixed sleeps, so the time spent reading files does not stretch the period.
            deadline += self.period
            if self._stop.wait(max(0.0, deadline - time.perf_counter())):
                return

    def start(self) -> "PowerSampler":
        if self._thread is not None:
            raise RuntimeError("sampler is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edge-lbp-power-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and take a last sample, so the recorded span reaches the moment of the call."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.sample()

    def __enter__(self) -> "PowerSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def samples(self) -> List[Sample]:
        with self._lock:
            return list(self._samples)

    def energy(self, t0: Optional[float] = None, t1: Optional[float] = None) -> EnergyReport:
        """Energy between ``t0`` and ``t1`` on the sampler's clock; see :func:`energy_in_window`."""
        return energy_in_window(self.samples, t0, t1)
