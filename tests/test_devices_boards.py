"""Board detection, the board table and the doctor report, on fake /proc, /sys and /etc trees."""
import json

import pytest

from edge_lbp.devices import PowerModel, PowerReading, boards, detect_board, device_report, open_power_reader
from edge_lbp.devices.boards import Board, parse_cpu_list, parse_l4t
from edge_lbp.devices.sensors import SysfsReader
from fake_device import make_tree


def arm_cpuinfo(n, model=None):
    blocks = [f"processor\t: {i}\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n" for i in range(n)]
    tail = f"\nHardware\t: BCM2835\nModel\t\t: {model}\n" if model else ""
    return "\n".join(blocks) + tail


def x86_cpuinfo(cores, threads_per_core):
    blocks = []
    for thread in range(threads_per_core):
        for core in range(cores):
            cpu = thread * cores + core
            blocks.append(
                f"processor\t: {cpu}\nmodel name\t: Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz\n"
                f"physical id\t: 0\ncore id\t\t: {core}\n"
            )
    return "\n".join(blocks)


def meminfo(kib):
    return f"MemTotal:       {kib} kB\nMemFree:         123456 kB\n"


PI4 = {
    "proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\x00",
    "proc/cpuinfo": arm_cpuinfo(4, "Raspberry Pi 4 Model B Rev 1.4"),
    "proc/meminfo": meminfo(3884404),
    "sys/devices/system/cpu/online": "0-3\n",
}
PI5 = {
    "proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\x00",
    "proc/cpuinfo": arm_cpuinfo(4),
    "proc/meminfo": meminfo(8245344),
    "sys/devices/system/cpu/online": "0-3\n",
}
NANO_JP4 = {
    "proc/device-tree/model": "NVIDIA Jetson Nano Developer Kit\x00",
    "etc/nv_tegra_release": "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
    "DATE: Sat Feb 19 17:05:08 UTC 2022\n",
    "proc/cpuinfo": arm_cpuinfo(4),
    "proc/meminfo": meminfo(4051032),
    "sys/devices/system/cpu/online": "0-3\n",
}
ORIN_NANO_JP6 = {
    "proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
    "etc/nv_tegra_release": "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Jul 19 23:24:25 UTC 2024\n",
    "proc/cpuinfo": arm_cpuinfo(6),
    "proc/meminfo": meminfo(7802596),
    "sys/devices/system/cpu/online": "0-5\n",
}
ORIN_NX_JP5 = {
    "proc/device-tree/model": "NVIDIA Orin NX Developer Kit\x00",
    "etc/nv_tegra_release": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n",
    "proc/cpuinfo": arm_cpuinfo(8),
    "proc/meminfo": meminfo(15655196),
    "sys/devices/system/cpu/online": "0-7\n",
}
X86_SMT = {"proc/cpuinfo": x86_cpuinfo(cores=4, threads_per_core=2), "proc/meminfo": meminfo(16303412)}


@pytest.mark.parametrize(
    "files, machine, kind, model, logical, memory_kib, threads, jetpack",
    [
        (PI4, "aarch64", "rpi4", "Raspberry Pi 4 Model B Rev 1.4", 4, 3884404, 4, None),
        (PI5, "aarch64", "rpi5", "Raspberry Pi 5 Model B Rev 1.0", 4, 8245344, 4, None),
        (NANO_JP4, "aarch64", "jetson-nano", "NVIDIA Jetson Nano Developer Kit", 4, 4051032, 4, "4"),
        (ORIN_NANO_JP6, "aarch64", "jetson-orin", "NVIDIA Jetson Orin Nano Developer Kit", 6, 7802596, 6, "6"),
        (ORIN_NX_JP5, "aarch64", "jetson-orin", "NVIDIA Orin NX Developer Kit", 8, 15655196, 8, "5"),
        (X86_SMT, "x86_64", "generic-x86_64", "Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", 8, 16303412, 4, None),
        ({"proc/cpuinfo": arm_cpuinfo(2), "proc/meminfo": meminfo(1000000)}, "aarch64", "generic-aarch64",
         "generic aarch64", 2, 1000000, 2, None),
    ],
)
def test_detects_board(tmp_path, files, machine, kind, model, logical, memory_kib, threads, jetpack):
    board = detect_board(make_tree(tmp_path, files), machine=machine)
    assert board.kind == kind
    assert board.model == model
    assert board.logical_cores == logical
    assert board.memory_bytes == memory_kib * 1024
    assert board.recommended_threads == threads
    assert board.jetpack == jetpack


def test_smt_siblings_do_not_count_as_threads(tmp_path):
    board = detect_board(make_tree(tmp_path, X86_SMT), machine="x86_64")
    assert (board.logical_cores, board.physical_cores, board.recommended_threads) == (8, 4, 4)


def test_offline_cores_lower_the_thread_count(tmp_path):
    # The Nano's 5 W power mode takes two of its four cores offline.
    board = detect_board(make_tree(tmp_path, {**NANO_JP4, "sys/devices/system/cpu/online": "0-1\n"}), machine="aarch64")
    assert (board.logical_cores, board.online_cores, board.recommended_threads) == (4, 2, 2)


def test_old_pi_kernel_names_the_board_only_in_cpuinfo(tmp_path):
    files = {k: v for k, v in PI4.items() if k != "proc/device-tree/model"}
    assert detect_board(make_tree(tmp_path, files), machine="armv7l").kind == "rpi4"


def test_pi4_has_published_power_model_and_sensor_boards_do_not_invent_one(tmp_path):
    pi4 = detect_board(make_tree(tmp_path / "pi4", PI4), machine="aarch64")
    assert (pi4.power_model.idle_w, pi4.power_model.full_w) == (2.7, 6.4)
    assert "pidramble" in pi4.power_model.source
    assert detect_board(make_tree(tmp_path / "orin", ORIN_NANO_JP6), machine="aarch64").power_model is None


@pytest.mark.parametrize("text, count", [("0-3", 4), ("0", 1), ("0-1,4,6-7", 5)])
def test_parse_cpu_list(text, count):
    assert parse_cpu_list(text) == count


def test_parse_l4t():
    assert parse_l4t("# R35 (release), REVISION: 4.1, GCID: 1") == ("R35.4.1", "5")
    assert parse_l4t("garbage") == (None, None)


def ina3221_hwmon(volts_mv=5000, curr_ma=(1200, 400, 300)):
    base = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/"
    files = {base + "in7_label": "sum of shunt voltage\n", base + "in7_input": "1234\n"}
    for channel, (label, ma) in enumerate(zip(("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"), curr_ma), start=1):
        files.update({base + f"in{channel}_label": label + "\n", base + f"in{channel}_input": f"{volts_mv}\n",
                      base + f"curr{channel}_input": f"{ma}\n"})
    return files


CPU_STATE = {
    "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1510400\n",
    "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
    "sys/class/thermal/thermal_zone0/temp": "48686\n",
}


def test_doctor_on_orin_reports_the_readable_module_sensor(tmp_path):
    report = device_report(make_tree(tmp_path, {**ORIN_NANO_JP6, **ina3221_hwmon(), **CPU_STATE}), machine="aarch64")
    json.dumps(report)  # plain data only
    assert report["board"]["kind"] == "jetson-orin" and report["board"]["jetpack"] == "6"
    assert report["cores"] == {"logical": 6, "physical": 6, "online": 6}
    assert report["recommended_threads"] == 6
    assert report["power"]["reader"] == "ina3221-hwmon" and not report["power"]["estimate"]
    assert "VDD_IN" in report["power"]["boundary"]
    hwmon = next(s for s in report["sensors"] if s["name"] == "ina3221-hwmon")
    assert hwmon["readable"] and hwmon["watts"] == pytest.approx(6.0)
    assert report["thermal"]["zones"] == ["cpu-thermal"]
    assert report["hints"] == []


def test_doctor_on_pi4_reports_an_estimate_and_what_to_fix(tmp_path):
    report = device_report(make_tree(tmp_path, PI4), machine="aarch64")
    json.dumps(report)
    assert report["memory_bytes"] == 3884404 * 1024
    assert report["power"]["estimate"] is True
    assert "pidramble" in report["power"]["source"]
    assert not any(s["found"] for s in report["sensors"])
    assert any("no power sensor" in hint and "external meter" in hint for hint in report["hints"])
    assert any("cpufreq" in hint for hint in report["hints"])
    assert any("thermal" in hint for hint in report["hints"])


def test_doctor_explains_unreadable_rapl(tmp_path):
    rapl = "sys/class/powercap/intel-rapl:0/"
    root = make_tree(tmp_path, {**X86_SMT, rapl + "name": "package-0\n", rapl + "energy_uj": "1\n",
                                rapl + "max_energy_range_uj": "262143328850\n"})

    def read_text(path):
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    report = device_report(root, read_text=read_text, machine="x86_64")
    entry = next(s for s in report["sensors"] if s["name"] == "rapl")
    assert entry["found"] and not entry["readable"]
    hint = next(h for h in report["hints"] if "energy_uj" in h)
    assert "permission denied" in hint and "root" in hint
    assert "\n" not in hint


def test_doctor_on_pi5_without_vcgencmd(tmp_path):
    def runner(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    report = device_report(make_tree(tmp_path, PI5), runner=runner, machine="aarch64")
    pmic = next(s for s in report["sensors"] if s["name"] == "rpi5-pmic")
    assert pmic["found"] and not pmic["readable"]
    assert any("vcgencmd" in hint and "raspi-utils" in hint for hint in report["hints"])
    assert report["power"]["estimate"] is True


def test_doctor_on_jetson_in_a_container_says_where_the_sensor_should_be(tmp_path, recwarn):
    report = device_report(make_tree(tmp_path, {**NANO_JP4, **CPU_STATE}), machine="aarch64")
    assert report["power"]["estimate"] is True
    assert any("/sys/bus/i2c/drivers/ina3221x" in hint and "bind-mount" in hint for hint in report["hints"])
    assert not recwarn.list  # the doctor reports; it does not warn


def test_doctor_on_x86_without_rapl_says_it_is_absent_not_forbidden(tmp_path):
    report = device_report(make_tree(tmp_path, X86_SMT), machine="x86_64")
    assert any("exposes no RAPL" in hint for hint in report["hints"])
    assert not any("root-only" in hint for hint in report["hints"])


class ToyMeter(SysfsReader):
    """A made-up board's own power monitor: microwatts in one file."""

    name = "toy-meter"
    boundary = "toy rails"
    hint = "toy meter not visible: load the toy_meter driver"
    file = "sys/devices/platform/toy-meter/power_uw"

    def present(self):
        return self.fs.path(self.file).exists()

    def read(self):
        return PowerReading(self.fs.number(self.fs.path(self.file)) / 1e6, self.boundary, "toy meter")


TOY = Board("toy-3", model=r"toy board 3\b", power_model=PowerModel(1.0, 3.0, source="Toy Board 3: made-up figures"),
            sensors=(ToyMeter,))
TOY_FILES = {"proc/device-tree/model": "Toy Board 3 Rev 1.1\x00", "proc/cpuinfo": arm_cpuinfo(4),
             "proc/meminfo": meminfo(2000000)}


@pytest.fixture
def toy_board(monkeypatch):
    """All that adding a board takes: its record in the table, nothing else."""
    monkeypatch.setattr(boards, "BOARDS", (*boards.BOARDS, TOY))


def test_a_board_added_to_the_table_is_detected_and_uses_its_own_sensor(tmp_path, toy_board, recwarn):
    root = make_tree(tmp_path, {**TOY_FILES, ToyMeter.file: "2500000\n"})
    board = detect_board(root, machine="aarch64")
    assert (board.kind, board.model) == ("toy-3", "Toy Board 3 Rev 1.1")
    assert board.power_model is TOY.power_model
    reader = open_power_reader(board, root=root)
    assert isinstance(reader, ToyMeter) and reader.read().watts == pytest.approx(2.5)
    assert not recwarn.list

    report = device_report(root, machine="aarch64")
    assert report["board"]["kind"] == "toy-3"
    assert report["sensors"][0] == {"name": "toy-meter", "found": True, "readable": True, "boundary": "toy rails",
                                    "watts": pytest.approx(2.5), "error": None}
    assert report["power"] == {"reader": "toy-meter", "boundary": "toy rails", "estimate": False}


def test_a_board_added_to_the_table_falls_back_to_its_power_model_and_hint(tmp_path, toy_board):
    report = device_report(make_tree(tmp_path, TOY_FILES), machine="aarch64")
    assert report["power"]["estimate"] and "Toy Board 3: made-up figures" in report["power"]["source"]
    assert not any(s["found"] for s in report["sensors"])
    assert ToyMeter.hint in report["hints"]


def test_each_kind_has_one_record():
    # The reader choice and the doctor find a board's record by its kind.
    kinds = [board.kind for board in boards.BOARDS]
    assert len(kinds) == len(set(kinds))
