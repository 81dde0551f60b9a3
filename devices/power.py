"""Power readings, the reader interface, the linear power model, and the two readers that need no sensor: an external
meter and the estimate."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Tuple, Union

import psutil

from edge_lbp.devices._sysfs import SensorError

# Measurement boundaries, as the profiling conventions name them.
MODULE_RAILS = "module rails"
PMIC_RAILS = "PMIC rails"
CPU_PACKAGE = "CPU package"
WALL = "wall"


@dataclass(frozen=True)
class PowerModel:
    """Board power as a straight line in CPU utilisation, from two published whole-board measurements."""

    idle_w: float
    full_w: float
    source: str
    boundary: str = "whole board at its 5 V input (modelled)"

    def watts(self, utilisation: float) -> float:
        u = min(max(utilisation, 0.0), 1.0)
        return self.idle_w + (self.full_w - self.idle_w) * u


@dataclass(frozen=True)
class PowerReading:
    """One reading. ``watts`` is instantaneous power; energy counters (RAPL, hwmon energy) leave it None and fill
    ``counters`` with ``name -> (cumulative µJ, wrap range in µJ or None)`` for the integrator to difference."""

    watts: Optional[float]
    boundary: str
    source: str
    estimate: bool = False
    rails: Mapping[str, float] = field(default_factory=dict)
    counters: Mapping[str, Tuple[int, Optional[int]]] = field(default_factory=dict)


class PowerReader:
    """A power source. ``present()`` says whether its files or command exist at all; ``read()`` raises
    :class:`SensorError` (one line, naming the file) when they exist but cannot be read."""

    name = "reader"
    boundary = ""
    hint = ""  # one line: what to do when this sensor is missing or unreadable

    def present(self) -> bool:
        return True

    def read(self) -> PowerReading:
        raise NotImplementedError


class ExternalMeter(PowerReader):
    """A reading the user supplies: a constant (e.g. a USB meter's average) or a callable polled per sample."""

    name = "external"

    def __init__(
        self,
        watts: Union[float, Callable[[], float]],
        *,
        boundary: str = f"{WALL} (external meter)",
        source: str = "external meter supplied by the user",
    ):
        self._watts = watts
        self.boundary = boundary
        self.source = source

    def read(self) -> PowerReading:
        try:
            watts = float(self._watts() if callable(self._watts) else self._watts)
        except Exception as err:  # user code: any failure must become a notice, not end the sampler
            raise SensorError(f"external meter failed: {type(err).__name__}: {err}") from None
        return PowerReading(watts, self.boundary, self.source)


class EstimateReader(PowerReader):
    """Board power modelled from system-wide CPU utilisation; every reading is labelled as an estimate."""

    name = "estimate"

    def __init__(self, model: Optional[PowerModel], cpu_percent: Optional[Callable[[], float]] = None):
        self.model = model
        self._cpu_percent = cpu_percent or (lambda: psutil.cpu_percent(interval=None))
        # psutil reports utilisation since its previous call; this first call only sets the baseline.
        self._cpu_percent()
        if model is None:
            self.boundary = "none"
            self.source = "no published power coefficients for this board: pass an ExternalMeter or a PowerModel"
        else:
            self.boundary = model.boundary
            self.source = f"estimate from CPU utilisation; {model.source}"

    def read(self) -> PowerReading:
        if self.model is None:
            return PowerReading(None, self.boundary, self.source, estimate=True)
        utilisation = self._cpu_percent() / 100.0
        return PowerReading(self.model.watts(utilisation), self.boundary, self.source, estimate=True)
