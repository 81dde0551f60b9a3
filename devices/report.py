"""The board report behind ``edge-lbp doctor``: the board, its resources, which sensors work, and what to fix."""
from __future__ import annotations

from typing import Optional

from edge_lbp.devices._sysfs import PathLike, ReadText, SensorError
from edge_lbp.devices.boards import JETSON_NANO, RPI5, BoardProfile, detect_board
from edge_lbp.devices.cpustate import FREQ_HINT, THERMAL_HINT, CpuStateReader
from edge_lbp.devices.power import EstimateReader, PowerReader
from edge_lbp.devices.choose import candidate_readers
from edge_lbp.devices.sensors import Ina3221Hwmon, Ina3221Iio, Pi5Pmic, Runner

NO_SENSOR_HINT = (
    "this board has no power sensor: energy is an estimate; for measured energy, "
    "pass a USB or wall meter reading as an external meter"
)


def _probe(reader: PowerReader) -> dict:
    entry = {"name": reader.name, "found": reader.present(), "readable": False, "boundary": None, "watts": None,
             "error": None}
    if entry["found"]:
        try:
            reading = reader.read()
        except SensorError as err:
            entry["error"] = str(err)
        else:
            entry.update(readable=True, boundary=reading.boundary, watts=reading.watts)
    return entry


# Rapl.hint is for a RAPL that is there but unreadable; absent altogether, it is usually a VM.
RAPL_ABSENT_HINT = ("no /sys/class/powercap/intel-rapl: this kernel or VM exposes no RAPL energy counters; "
                    "measure at the wall with an external meter")


def _primary_sensor_hint(board: BoardProfile) -> Optional[str]:
    """What to fix when the sensor a board ought to have is not visible at all."""
    if board.kind == RPI5:
        return Pi5Pmic.hint
    if board.kind == JETSON_NANO or board.jetpack == "4":
        return Ina3221Iio.hint
    if board.is_jetson:
        return Ina3221Hwmon.hint
    if board.machine == "x86_64":
        return RAPL_ABSENT_HINT
    return None


def device_report(
    root: PathLike = "/",
    *,
    read_text: Optional[ReadText] = None,
    runner: Optional[Runner] = None,
    machine: Optional[str] = None,
) -> dict:
    """A plain, JSON-serialisable dict; see the keys below. Reads only, emits no notices."""
    board = detect_board(root, read_text=read_text, machine=machine)
    readers = candidate_readers(board, root=root, read_text=read_text, runner=runner)
    sensors = [_probe(reader) for reader in readers]
    hints = [f"{s['error']}: {r.hint}" for s, r in zip(sensors, readers) if s["found"] and not s["readable"]]

    chosen = next((s for s in sensors if s["readable"]), None)
    if chosen:
        power = {"reader": chosen["name"], "boundary": chosen["boundary"], "estimate": False}
    else:
        estimate = EstimateReader(board.power_model, cpu_percent=lambda: 0.0)
        power = {"reader": estimate.name, "boundary": estimate.boundary, "estimate": True, "source": estimate.source}
        if not any(s["found"] for s in sensors):
            hints.append(_primary_sensor_hint(board) or NO_SENSOR_HINT)
        if board.power_model is None:
            hints.append(f"{board.model}: {estimate.source}")

    cpu = CpuStateReader(root, read_text=read_text)
    if not cpu.freq_files:
        hints.append(FREQ_HINT)
    if not cpu.zone_files:
        hints.append(THERMAL_HINT)

    return {
        "board": {"kind": board.kind, "model": board.model, "machine": board.machine, "l4t": board.l4t,
                  "jetpack": board.jetpack},
        "cores": {"logical": board.logical_cores, "physical": board.physical_cores, "online": board.online_cores},
        "memory_bytes": board.memory_bytes,
        "recommended_threads": board.recommended_threads,
        "power": power,
        "sensors": sensors,
        "cpufreq": {"found": bool(cpu.freq_files), "cpus": len(cpu.freq_files)},
        "thermal": {"found": bool(cpu.zone_files), "zones": [name for name, _ in cpu.zone_files]},
        "hints": hints,
    }
