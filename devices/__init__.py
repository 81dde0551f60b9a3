"""Board profiles and power / thermal sensor readers.

Every reader takes a ``root`` (``/`` on the device, a fake sysfs tree in tests) and an optional ``read_text``;
``vcgencmd`` goes through an injectable ``runner``. Sensors that are missing or unreadable produce a one-line
:class:`SensorNotice` and the CPU-utilisation estimate takes over, labelled as an estimate with its source.
"""
from edge_lbp.devices._sysfs import SensorError, SensorNotice
from edge_lbp.devices.boards import PUBLISHED_POWER_MODELS, BoardProfile, detect_board
from edge_lbp.devices.choose import open_power_reader
from edge_lbp.devices.cpustate import CpuStateReader
from edge_lbp.devices.report import device_report
from edge_lbp.devices.power import EstimateReader, ExternalMeter, PowerModel, PowerReader, PowerReading
from edge_lbp.devices.sampler import (
    EnergyReport,
    PowerSampler,
    Sample,
    counter_delta,
    energy_in_window,
    power_series,
)
from edge_lbp.devices.sensors import (
    HwmonEnergy,
    HwmonPower,
    Ina3221Hwmon,
    Ina3221Iio,
    Pi5Pmic,
    Rapl,
    parse_pmic_adc,
)

__all__ = [
    "BoardProfile",
    "CpuStateReader",
    "EnergyReport",
    "EstimateReader",
    "ExternalMeter",
    "HwmonEnergy",
    "HwmonPower",
    "Ina3221Hwmon",
    "Ina3221Iio",
    "PUBLISHED_POWER_MODELS",
    "Pi5Pmic",
    "PowerModel",
    "PowerReader",
    "PowerReading",
    "PowerSampler",
    "Rapl",
    "Sample",
    "SensorError",
    "SensorNotice",
    "counter_delta",
    "detect_board",
    "device_report",
    "energy_in_window",
    "open_power_reader",
    "power_series",
    "parse_pmic_adc",
]
