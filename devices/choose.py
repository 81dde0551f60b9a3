"""Which power reader a board gets: the first of its sensors that reads, else the CPU-utilisation estimate."""
from __future__ import annotations

from typing import Callable, List, Optional, Union

from edge_lbp.devices._sysfs import PathLike, ReadText, SensorError, notify
from edge_lbp.devices.boards import BoardProfile, detect_board
from edge_lbp.devices.power import EstimateReader, ExternalMeter, PowerReader
from edge_lbp.devices.sensors import (
    HwmonEnergy,
    HwmonPower,
    Ina3221Hwmon,
    Ina3221Iio,
    Rapl,
    Runner,
    SysfsReader,
)


# Looked for on every board after its own sensors: each is a glob under /sys, so looking costs nothing and a board
# missing from BOARDS still finds its monitor. Pi5Pmic is not here: it runs a command, so only where its board says.
EVERY_BOARD = (Ina3221Hwmon, Ina3221Iio, Rapl, HwmonPower, HwmonEnergy)


def candidate_readers(
    board: BoardProfile, *, root: PathLike = "/", read_text: Optional[ReadText] = None, runner: Optional[Runner] = None
) -> List[SysfsReader]:
    """The sensors worth trying on ``board``, best first: its own (its record in BOARDS), then EVERY_BOARD's."""
    own = board.record.sensors
    kinds = own + tuple(kind for kind in EVERY_BOARD if kind not in own)
    return [kind(root, read_text=read_text, runner=runner) for kind in kinds]


def describe_fallback(fallback: EstimateReader) -> str:
    if fallback.model is None:
        return f"no energy figures: {fallback.source}"
    return f"energy will be an estimate ({fallback.source})"


def open_power_reader(
    board: Optional[BoardProfile] = None,
    *,
    root: PathLike = "/",
    read_text: Optional[ReadText] = None,
    runner: Optional[Runner] = None,
    external: Union[None, float, Callable[[], float], PowerReader] = None,
    cpu_percent: Optional[Callable[[], float]] = None,
) -> PowerReader:
    """The first sensor on ``board`` that reads, else the CPU-utilisation estimate; never raises for a sensor.

    ``external`` (watts, a callable returning watts, or a reader) replaces the sensors, e.g. a USB or wall meter.
    Every unreadable sensor and the fall-back itself produce a one-line :class:`SensorNotice`.
    """
    if external is not None:
        return external if isinstance(external, PowerReader) else ExternalMeter(external)
    board = board or detect_board(root, read_text=read_text)
    problems = []
    for reader in candidate_readers(board, root=root, read_text=read_text, runner=runner):
        if not reader.present():
            continue
        try:
            reader.read()
        except SensorError as err:
            problems.append(str(err))
            continue
        for problem in problems:
            notify(f"{problem}; using {reader.name} instead")
        return reader
    fallback = EstimateReader(board.power_model, cpu_percent)
    reason = "; ".join(problems) or f"no power sensor found on {board.model}"
    notify(f"{reason}; {describe_fallback(fallback)}")
    return fallback
