"""Which board this is (Raspberry Pi 4 / 5, Jetson Nano / Orin, generic CPU), its cores, memory and thread count."""
from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from typing import Optional, Tuple

import psutil

from edge_lbp.devices._sysfs import PathLike, ReadText, Sysfs
from edge_lbp.devices.power import PowerModel

RPI4, RPI5 = "rpi4", "rpi5"
JETSON_NANO, JETSON_ORIN, JETSON_OTHER = "jetson-nano", "jetson-orin", "jetson"
JETSON_KINDS = (JETSON_NANO, JETSON_ORIN, JETSON_OTHER)

# L4T major release -> JetPack major version (NVIDIA's release tables; R34 was the JetPack 5 developer preview).
_JETPACK_OF_L4T = {32: "4", 34: "5", 35: "5", 36: "6"}


# Only boards with a measurement we could trace to a public page. Jeff Geerling's Raspberry Pi power benchmarks
# (pidramble.com/wiki/benchmarks/power-consumption) list a headless Pi 4 B at 540 mA idle and 1280 mA under
# `stress --cpu 4`, both at 5 V: 2.7 W and 6.4 W. Boards with an on-board sensor (Pi 5, Jetson) are not listed:
# their fallback asks for a meter or a user-supplied PowerModel instead of inventing numbers.
PUBLISHED_POWER_MODELS = {
    RPI4: PowerModel(
        idle_w=2.7,
        full_w=6.4,
        source="Raspberry Pi 4 B, headless: 2.7 W idle, 6.4 W with stress --cpu 4 "
        "(J. Geerling, pidramble.com/wiki/benchmarks/power-consumption)",
    ),
}


@dataclass(frozen=True)
class BoardProfile:
    kind: str  # rpi4, rpi5, jetson-nano, jetson-orin, jetson, generic-x86_64, generic-aarch64, ...
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
    def is_jetson(self) -> bool:
        return self.kind in JETSON_KINDS


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


def _kind(model: str, has_tegra_release: bool, machine: str) -> str:
    lower = model.lower()
    if re.search(r"raspberry pi (?:compute module )?5\b", lower):
        return RPI5
    if re.search(r"raspberry pi (?:compute module )?4\b", lower):
        return RPI4
    if "jetson" in lower or has_tegra_release:
        if "orin" in lower:
            return JETSON_ORIN
        if "nano" in lower:
            return JETSON_NANO
        return JETSON_OTHER
    return f"generic-{machine}"


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
    kind = _kind(model, tegra is not None, machine)
    l4t, jetpack = parse_l4t(tegra)

    logical, physical = _cpuinfo_counts(cpuinfo)
    online_text = fs.optional_text("sys/devices/system/cpu/online")
    # Jetson power modes and hotplug take cores offline (the Nano's 5 W mode leaves two).
    online = parse_cpu_list(online_text) if online_text else logical
    # SMT siblings share one core's vector units, so dense kernels gain nothing from a second thread per core.
    threads = max(1, min(physical, online))
    return BoardProfile(
        kind=kind,
        model=model,
        machine=machine,
        logical_cores=logical,
        physical_cores=physical,
        online_cores=online,
        memory_bytes=_memory_bytes(fs.optional_text("proc/meminfo")),
        recommended_threads=threads,
        l4t=l4t,
        jetpack=jetpack,
        power_model=PUBLISHED_POWER_MODELS.get(kind),
    )
