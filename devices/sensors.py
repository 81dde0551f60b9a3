"""Power sensors: Jetson INA3221 (JetPack 4 iio and JetPack 5/6 hwmon), Raspberry Pi 5 PMIC, RAPL, generic hwmon."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from edge_lbp.devices._sysfs import PathLike, ReadText, SensorError, Sysfs
from edge_lbp.devices.power import CPU_PACKAGE, MODULE_RAILS, PMIC_RAILS, PowerReader, PowerReading

Runner = Callable[[Sequence[str]], str]

# Rails that carry the whole module's input; the other INA3221 rails are parts of it and must not be added on top.
JETSON_TOTAL_RAILS = ("POM_5V_IN", "VDD_IN")
PMIC_COMMAND = ("vcgencmd", "pmic_read_adc")


def run_command(argv: Sequence[str]) -> str:
    """stdout of one of this module's fixed commands (never a command read from a file)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=5, check=True).stdout


class SysfsReader(PowerReader):
    # One constructor for every sensor so candidate_readers can build them alike; only Pi5Pmic uses the runner.
    jetpacks: Tuple[str, ...] = ()  # a Jetson sensor's JetPack releases, whose kernels carry its driver
    absent_hint: Optional[str] = None  # what to do when it is not there at all, where that differs from ``hint``

    def __init__(self, root: PathLike = "/", *, read_text: Optional[ReadText] = None, runner: Optional[Runner] = None):
        self.fs = Sysfs(root, read_text)
        self.runner = runner or run_command


def _module_reading(rails: Dict[str, float], source: str) -> PowerReading:
    if not rails:
        raise SensorError(f"{source}: no connected rails")
    total = next((name for name in JETSON_TOTAL_RAILS if name in rails), None)
    if total:
        watts, boundary = rails[total], f"{MODULE_RAILS}: {total} (module input)"
    else:
        watts, boundary = sum(rails.values()), f"{MODULE_RAILS}: sum of {', '.join(rails)} (no input rail found)"
    return PowerReading(watts, boundary, source, rails=dict(rails))


class Ina3221Iio(SysfsReader):
    """JetPack 4 (L4T R32): ``ina3221x`` iio driver; ``rail_name_N`` and ``in_powerN_input`` in mW."""

    name = "ina3221-iio"
    boundary = MODULE_RAILS
    jetpacks = ("4",)
    hint = "INA3221 (JetPack 4) not visible under /sys/bus/i2c/drivers/ina3221x: run on the host or bind-mount /sys"
    pattern = "sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*"

    def present(self) -> bool:
        return bool(self.fs.glob(self.pattern))

    def read(self) -> PowerReading:
        rails = {}
        for label in self.fs.glob(self.pattern):
            channel = label.name.rsplit("_", 1)[1]
            rails[self.fs.text(label)] = self.fs.number(label.with_name(f"in_power{channel}_input")) / 1e3
        return _module_reading(rails, "Jetson INA3221 (iio, JetPack 4)")


class Ina3221Hwmon(SysfsReader):
    """JetPack 5/6 (L4T R35/R36): mainline ``ina3221`` hwmon driver; ``inN_label``, ``inN_input`` in mV and
    ``currN_input`` in mA. Labels without a current channel (the shunt-sum channel) are skipped."""

    name = "ina3221-hwmon"
    boundary = MODULE_RAILS
    jetpacks = ("5", "6")
    hint = "INA3221 (JetPack 5/6) not visible under /sys/bus/i2c/drivers/ina3221: run on the host or bind-mount /sys"
    pattern = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"

    def present(self) -> bool:
        return bool(self.fs.glob(self.pattern))

    def read(self) -> PowerReading:
        rails = {}
        for label in self.fs.glob(self.pattern):
            channel = label.name[2:].split("_", 1)[0]
            current = label.with_name(f"curr{channel}_input")
            name = self.fs.text(label)
            if not current.exists() or name.upper() == "NC":  # NC: channel not connected on this carrier
                continue
            millivolts = self.fs.number(label.with_name(f"in{channel}_input"))
            rails[name] = millivolts * self.fs.number(current) / 1e6
        return _module_reading(rails, "Jetson INA3221 (hwmon, JetPack 5/6)")


# `vcgencmd pmic_read_adc` prints lines such as `  VDD_CORE_A current(7)=0.72054000A` and
# `  VDD_CORE_V volt(15)=0.72079000V`; some firmware prints `VDD_CORE_A=0.72A` instead.
_PMIC_LINE = re.compile(r"^\s*(\w+?)_([AV])(?:\s+\w+\(\d+\))?\s*=\s*([-+0-9.eE]+)\s*[AV]?\s*$")


def parse_pmic_adc(text: str) -> Dict[str, Tuple[float, float]]:
    """``rail -> (volts, amps)`` for every rail that reports both; voltage-only rails (EXT5V, BATT) are dropped."""
    volts: Dict[str, float] = {}
    amps: Dict[str, float] = {}
    for line in text.splitlines():
        match = _PMIC_LINE.match(line)
        if match:
            rail, unit, value = match.groups()
            (amps if unit == "A" else volts)[rail] = float(value)
    return {rail: (volts[rail], amps[rail]) for rail in amps if rail in volts}


def _command_error(argv: Sequence[str], err: Exception) -> SensorError:
    command = " ".join(argv)
    if isinstance(err, FileNotFoundError):
        return SensorError(f"cannot run `{command}`: {argv[0]} not found")
    if isinstance(err, PermissionError):
        return SensorError(f"cannot run `{command}`: permission denied")
    if isinstance(err, subprocess.CalledProcessError):
        detail = (err.stderr or "").strip().splitlines()
        return SensorError(f"`{command}` exited with {err.returncode}" + (f": {detail[0]}" if detail else ""))
    return SensorError(f"cannot run `{command}`: {err}")


class Pi5Pmic(SysfsReader):
    """Raspberry Pi 5 PMIC ADCs through ``vcgencmd pmic_read_adc``: the sum of V·I over the paired rails."""

    name = "rpi5-pmic"
    boundary = PMIC_RAILS
    hint = "vcgencmd missing or denied: install raspi-utils and add the user to the 'video' group"

    def read(self) -> PowerReading:
        try:
            output = self.runner(PMIC_COMMAND)
        except (OSError, subprocess.SubprocessError) as err:
            raise _command_error(PMIC_COMMAND, err) from None
        pairs = parse_pmic_adc(output)
        if not pairs:
            raise SensorError(f"`{' '.join(PMIC_COMMAND)}` printed no rail with both a current and a voltage")
        rails = {rail: v * a for rail, (v, a) in pairs.items()}
        # The PMIC sees only its own regulators: USB devices, the fan and its conversion losses are outside.
        boundary = f"{PMIC_RAILS}: sum of V·I over {len(rails)} rails (excludes 5 V input losses, USB, fan)"
        return PowerReading(sum(rails.values()), boundary, "Raspberry Pi 5 PMIC (vcgencmd pmic_read_adc)", rails=rails)


class Rapl(SysfsReader):
    """powercap RAPL: cumulative ``energy_uj`` per package domain, wrapping at ``max_energy_range_uj``."""

    name = "rapl"
    boundary = CPU_PACKAGE
    hint = (
        "RAPL energy_uj is root-only on current kernels (CVE-2020-8694): run as root or "
        "grant read access to /sys/class/powercap/intel-rapl:*/energy_uj"
    )
    # Absent altogether, rather than unreadable, it is usually a VM.
    absent_hint = ("no /sys/class/powercap/intel-rapl: this kernel or VM exposes no RAPL energy counters; "
                   "measure at the wall with an external meter")

    def _domains(self) -> List[Path]:
        top = [d for d in self.fs.glob("sys/class/powercap/intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", d.name)]
        packages = [d for d in top if (self.fs.optional_text(d / "name") or "").startswith("package")]
        # Without package domains (e.g. only psys), use what exists rather than nothing.
        return packages or top

    def present(self) -> bool:
        return bool(self._domains())

    def read(self) -> PowerReading:
        counters = {}
        for domain in self._domains():
            label = self.fs.optional_text(domain / "name") or domain.name
            energy = int(self.fs.number(domain / "energy_uj"))
            counters[label] = (energy, int(self.fs.number(domain / "max_energy_range_uj")))
        boundary = f"{CPU_PACKAGE} (RAPL {', '.join(counters)})"
        return PowerReading(None, boundary, "powercap RAPL energy counters", counters=counters)


_TOTAL_LABEL = re.compile(r"socket|package|total|sum", re.I)


class _HwmonChannels(SysfsReader):
    """The first hwmon device exposing ``pattern`` files. When some channel labels name a total (socket,
    package), only those are used, so per-core channels (amd_energy) are not added to their own socket."""

    pattern = ""

    def _channels(self) -> Tuple[str, List[Tuple[str, Path]]]:
        for device in self.fs.glob("sys/class/hwmon/hwmon*"):
            files = self.fs.glob(self.pattern, base=device)
            if not files:
                continue
            labelled = [(self.fs.optional_text(f.with_name(f.name.replace("_input", "_label"))), f) for f in files]
            channels = [(label or f.name, f) for label, f in labelled]
            totals = [(label, f) for label, f in channels if _TOTAL_LABEL.search(label)]
            return self.fs.optional_text(device / "name") or device.name, totals or channels
        return "", []

    def present(self) -> bool:
        return bool(self._channels()[1])

    def _require_channels(self) -> Tuple[str, List[Tuple[str, Path]]]:
        device, channels = self._channels()
        if not channels:
            raise SensorError(f"no {self.pattern} files under {self.fs.path('sys/class/hwmon')}")
        return device, channels


class HwmonPower(_HwmonChannels):
    """hwmon ``power*_input`` in µW."""

    name = "hwmon-power"
    boundary = "hwmon device"
    hint = "no hwmon power*_input: the board's power monitor has no Linux driver loaded"
    pattern = "power*_input"

    def read(self) -> PowerReading:
        device, channels = self._require_channels()
        rails = {label: self.fs.number(f) / 1e6 for label, f in channels}
        boundary = f"hwmon device '{device}' ({', '.join(rails)})"
        return PowerReading(sum(rails.values()), boundary, f"hwmon {device} power*_input", rails=rails)


class HwmonEnergy(_HwmonChannels):
    """hwmon ``energy*_input``: cumulative µJ (64-bit, so no wrap range)."""

    name = "hwmon-energy"
    boundary = "hwmon device"
    hint = "no hwmon energy*_input: load the CPU's energy driver (e.g. amd_energy) or use RAPL"
    pattern = "energy*_input"

    def read(self) -> PowerReading:
        device, channels = self._require_channels()
        counters = {label: (int(self.fs.number(f)), None) for label, f in channels}
        boundary = f"hwmon device '{device}' ({', '.join(counters)})"
        return PowerReading(None, boundary, f"hwmon {device} energy*_input", counters=counters)
