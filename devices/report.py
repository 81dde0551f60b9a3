"""The board report behind ``edge-lbp doctor``: the board, its resources, which sensors work, and what to fix."""
from __future__ import annotations

from typing import Optional

from edge_lbp.devices._sysfs import PathLike, ReadText, SensorError
from edge_lbp.devices.boards import BoardProfile, detect_board
from edge_lbp.devices.choose import candidate_readers
from edge_lbp.devices.cpustate import FREQ_HINT, THERMAL_HINT, CpuStateReader
from edge_lbp.devices.power import EstimateReader, PowerReader
from edge_lbp.devices.sensors import Runner

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


def _missing_sensor_hint(board: BoardProfile) -> Optional[str]:
    """What to fix when the sensor a board ought to have (the first of its own that its JetPack drives, else the
    first) is not visible at all."""
    own = board.record.sensors
    if not own:
        return None
    expected = next((kind for kind in own if board.jetpack in kind.jetpacks), own[0])
    return expected.absent_hint or expected.hint


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
            hints.append(_missing_sensor_hint(board) or NO_SENSOR_HINT)
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
