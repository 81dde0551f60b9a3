"""The boards this package knows, one :class:`Board` record each in :data:`BOARDS`; which one this is, with its
cores, memory and thread count."""
from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from typing import Optional, Tuple, Type

import psutil

from edge_lbp.devices._sysfs import PathLike, ReadText, Sysfs
from edge_lbp.devices.power import PowerModel
from edge_lbp.devices.sensors import Ina3221Hwmon, Ina3221Iio, Pi5Pmic, Rapl, SysfsReader

# L4T major release -> JetPack major version (NVIDIA's release tables; R34 was the JetPack 5 developer preview).
_JETPACK_OF_L4T = {32: "4", 34: "5", 35: "5", 36: "6"}


@dataclass(frozen=True)
class Board:
    """Everything this package knows about one board. Detection, the power estimate, the choice of sensors and the
    doctor's hints all read it from :data:`BOARDS`, so adding a board is adding one record there."""

    kind: str  # the name BoardProfile.kind and the reports carry
    # How to recognise it: every condition set must hold, and the first record in BOARDS that matches wins.
    model: Optional[str] = None  # regex searched in the lower-cased model (device tree, else /proc/cpuinfo's Model)
    jetson: bool = False  # an NVIDIA L4T system: the model names a Jetson, or /etc/nv_tegra_release exists
    machine: Optional[str] = None  # platform.machine(), for a board told apart by its CPU architecture alone
    # Whole-board power in CPU utilisation from published measurements, for when no sensor reads; None rather than
    # invented numbers (the fallback then asks for a meter).
    power_model: Optional[PowerModel] = None
    # Its own power sensors, tried before the ones looked for on every board (choose.EVERY_BOARD). The one it ought
    # to have comes first; among a Jetson's, the one its JetPack release drives (SysfsReader.jetpacks).
    sensors: Tuple[Type[SysfsReader], ...] = ()

    def recognises(self, model: str, l4t_release: bool, machine: str) -> bool:
        """Whether a system with this model string, /etc/nv_tegra_release (or not) and CPU is this board."""
        lower = model.lower()
        if self.jetson and not ("jetson" in lower or l4t_release):
            return False
        if self.machine is not None and self.machine != machine:
            return False
        return self.model is None or re.search(self.model, lower) is not None


BOARDS: Tuple[Board, ...] = (
    # The Pi 5's PMIC reads its own rails; no published whole-board coefficients.
    Board("rpi5", model=r"raspberry pi (?:compute module )?5\b", sensors=(Pi5Pmic,)),
    # No sensor. Jeff Geerling's Raspberry Pi power benchmarks (pidramble.com/wiki/benchmarks/power-consumption) list
    # a headless Pi 4 B at 540 mA idle and 1280 mA under `stress --cpu 4`, both at 5 V: 2.7 W and 6.4 W.
    Board(
        "rpi4",
        model=r"raspberry pi (?:compute module )?4\b",
        power_model=PowerModel(
            idle_w=2.7,
            full_w=6.4,
            source="Raspberry Pi 4 B, headless: 2.7 W idle, 6.4 W with stress --cpu 4 "
            "(J. Geerling, pidramble.com/wiki/benchmarks/power-consumption)",
        ),
    ),
    # Before the Nano: a "Jetson Orin Nano" is an Orin. Orin runs JetPack 5 and later, the Nano JetPack 4 only.
    Board("jetson-orin", jetson=True, model="orin", sensors=(Ina3221Hwmon,)),
    Board("jetson-nano", jetson=True, model="nano", sensors=(Ina3221Iio,)),
    Board("jetson", jetson=True, sensors=(Ina3221Hwmon, Ina3221Iio)),  # TX2, Xavier: JetPack 4 or 5
    Board("generic-x86_64", machine="x86_64", sensors=(Rapl,)),
)


def board_record(kind: str) -> Board:
    """The record of ``kind``; a board missing from BOARDS (generic-aarch64, ...) is known by its kind alone."""
    return next((board for board in BOARDS if board.kind == kind), Board(kind))


# kind -> published model, for callers that build a BoardProfile by hand; detect_board takes it from the record.
PUBLISHED_POWER_MODELS = {board.kind: board.power_model for board in BOARDS if board.power_model}


@dataclass(frozen=True)
class BoardProfile:
    kind: str  # a Board.kind from BOARDS (rpi5, jetson-orin, generic-x86_64, ...), else generic-<machine>
    model: str
    machine: str
    logical_cores: int
    physical_cores: int
    online_cores: int
    memory_bytes: int
    recommended_threads: int
    l4t: Optional[str] = None
    jetpack: Optional[str] = None
    power_model: Optional[PowerModel] = None

    @property
    def record(self) -> Board:
        """Its record in BOARDS: its own sensors, for the reader choice and the doctor's hints."""
        return board_record(self.kind)


def parse_cpu_list(text: str) -> int:
    """Number of CPUs in a sysfs list such as ``0-3`` or ``0-1,4,6-7``."""
    count = 0
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def parse_l4t(text: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """``# R35 (release), REVISION: 4.1, ...`` -> ``("R35.4.1", "5")``."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    if not match:
        return None, None
    major = int(match.group(1))
    return f"R{major}.{match.group(2)}", _JETPACK_OF_L4T.get(major)


def _cpuinfo_counts(cpuinfo: Optional[str]) -> Tuple[int, int]:
    """(logical, physical) from /proc/cpuinfo; ARM kernels print no core ids, so physical = logical there."""
    if not cpuinfo:
        return psutil.cpu_count(logical=True) or 1, psutil.cpu_count(logical=False) or 1
    logical = len(re.findall(r"^processor\s*:", cpuinfo, flags=re.M))
    cores = set()
    for block in cpuinfo.split("\n\n"):
        package = re.search(r"^physical id\s*:\s*(\d+)", block, flags=re.M)
        core = re.search(r"^core id\s*:\s*(\d+)", block, flags=re.M)
        if package and core:
            cores.add((package.group(1), core.group(1)))
    logical = logical or 1
    return logical, len(cores) or logical


def _memory_bytes(meminfo: Optional[str]) -> int:
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo or "", flags=re.M)
    return int(match.group(1)) * 1024 if match else psutil.virtual_memory().total


def _board_model(fs: Sysfs, cpuinfo: Optional[str]) -> Optional[str]:
    model = fs.optional_text("proc/device-tree/model") or fs.optional_text("sys/firmware/devicetree/base/model")
    if model:
        return model
    # Older Raspberry Pi kernels only name the board in /proc/cpuinfo.
    match = re.search(r"^Model\s*:\s*(.+)$", cpuinfo or "", flags=re.M)
    return match.group(1).strip() if match else None


def detect_board(
    root: PathLike = "/", *, read_text: Optional[ReadText] = None, machine: Optional[str] = None
) -> BoardProfile:
    """Identify the board from the device-tree model, /etc/nv_tegra_release and /proc/cpuinfo under ``root``."""
    fs = Sysfs(root, read_text)
    machine = machine or platform.machine()
    cpuinfo = fs.optional_text("proc/cpuinfo")
    tegra = fs.optional_text("etc/nv_tegra_release")
    model = _board_model(fs, cpuinfo)
    if not model:
        name = re.search(r"^model name\s*:\s*(.+)$", cpuinfo or "", flags=re.M)
        model = name.group(1).strip() if name else f"generic {machine}"
    record = next((board for board in BOARDS if board.recognises(model, tegra is not None, machine)),
                  Board(f"generic-{machine}"))
    l4t, jetpack = parse_l4t(tegra)

    logical, physical = _cpuinfo_counts(cpuinfo)
    online_text = fs.optional_text("sys/devices/system/cpu/online")
    # Jetson power modes and hotplug take cores offline (the Nano's 5 W mode leaves two).
    online = parse_cpu_list(online_text) if online_text else logical
    # SMT siblings share one core's vector units, so dense kernels gain nothing from a second thread per core.
    threads = max(1, min(physical, online))
    return BoardProfile(
        kind=record.kind,
        model=model,
        machine=machine,
        logical_cores=logical,
        physical_cores=physical,
        online_cores=online,
        memory_bytes=_memory_bytes(fs.optional_text("proc/meminfo")),
        recommended_threads=threads,
        l4t=l4t,
        jetpack=jetpack,
        power_model=record.power_model,
    )
