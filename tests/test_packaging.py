"""The package installs in the product's layout and the device path needs no workstation packages."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edge_lbp
from subprocess_guard import BLOCK_WORKSTATION

ROOT = Path(__file__).resolve().parents[1]


def _python(code, tmp_path, python=sys.executable):
    # Run from an empty folder so that only the installed package is importable.
    return subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)


DEVICE_IMPORTS = textwrap.dedent("""
    import sys
    import edge_lbp, edge_lbp.runtime, edge_lbp.devices, edge_lbp.export, edge_lbp.core.wht, edge_lbp.cli
    # Every method's module, and the exporter's torch halves of LoRA and side-tuning: installed on the device too.
    import edge_lbp.export.lora_adapters, edge_lbp.export.side_network, edge_lbp.methods.zo_hybrid.session
    import numpy as np
    from edge_lbp.core.wht import linear_backward
    gx, gw, gb = linear_backward(np.ones((1, 65, 4), np.float32), np.ones((1, 65, 3), np.float32),
                                 np.ones((3, 4), np.float32), grid=(8, 8), extra_tokens=1)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime"))
    print("loaded:", loaded, gw.shape)
""")


def test_device_path_imports_without_torch_or_onnxruntime(tmp_path):
    result = _python(BLOCK_WORKSTATION + DEVICE_IMPORTS, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loaded: [] (3, 4)" in result.stdout


def test_blocker_really_blocks(tmp_path):
    result = _python(BLOCK_WORKSTATION + "import torch", tmp_path)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_no_top_level_export_runtime_or_devices_module(tmp_path):
    code = "import importlib.util as u; print([n for n in ('export', 'runtime', 'devices') if u.find_spec(n)])"
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_version_and_help():
    script = Path(sys.executable).with_name("edge-lbp")
    assert script.exists(), f"console script missing next to {sys.executable}"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"edge-lbp {edge_lbp.__version__}"
    usage = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert usage.stdout.startswith("usage: edge-lbp")


def _readme_commands():
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_command():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert commands[1].endswith("pytest")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def _core_venv(tmp_path):
    """A real venv with `pip install .` and no extras (pytest beside it), checked to hold neither torch nor
    onnxruntime; returns its python and the environment to run it in."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(ROOT), "pytest"], capture_output=True,
                             text=True, env=env, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    result = _python(DEVICE_IMPORTS + textwrap.dedent("""
        import importlib.util as u
        print("absent:", [n for n in ("torch", "onnxruntime") if u.find_spec(n) is None])
    """), tmp_path, python)
    assert result.returncode == 0, result.stderr
    assert "loaded: [] (3, 4)" in result.stdout
    assert "absent: ['torch', 'onnxruntime']" in result.stdout
    return python, env


@pytest.mark.slow
def test_core_install_alone_runs_the_device_path(tmp_path):
    """The core venv: the device path imports, torch is not there, and the fast suite passes with what needs the
    workstation side or Flower skipped, each with its reason."""
    python, env = _core_venv(tmp_path)
    # Run from outside the checkout, so that the installed package is the one imported (from the root, the source
    # folder edge_lbp/ would come first and, installed for real, has no runtime/ inside).
    suite = subprocess.run([python, "-m", "pytest", str(ROOT / "tests"), "-m", "not slow", "-q", "-p",
                            "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                           env=dict(env, NUMBA_CACHE_DIR=str(tmp_path / "numba")))
    assert suite.returncode == 0, suite.stdout[-5000:]
    assert re.search(r"\d+ passed", suite.stdout.splitlines()[-1]), suite.stdout[-2000:]


@pytest.mark.slow
def test_core_install_exports_an_onnx_file_with_orts_gradients(tmp_path):
    """The core venv alone (no torch, no onnxruntime) runs `edge-lbp export model.onnx -o art` on vit-tiny's
    forward and trains the artifact on the numba engine; its first pass's gradients equal those ONNX Runtime
    training computes here on the artifact `--gradients ort` exports from the same file (1e-5)."""
    pytest.importorskip("torch", reason="vit-tiny's forward is exported from torch")
    pytest.importorskip("onnxruntime.training", reason="the reference gradients are ONNX Runtime training's")
    import numpy as np
    import onnx

    from edge_lbp.export.exporter import load_model

    onnx.save(load_model("vit-tiny")[0], tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 3)
    np.savez(tmp_path / "batch.npz", x=x, y=y)
    python, env = _core_venv(tmp_path)
    export = subprocess.run([str(Path(python).with_name("edge-lbp")), "export", "model.onnx", "-o", "art"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=1200)
    assert export.returncode == 0, export.stderr[-3000:]
    train = _python(textwrap.dedent("""
        import numpy as np, edge_lbp
        batch = np.load("batch.npz")
        session = edge_lbp.load("art", "numba")
        session.forward_backward(batch["x"], batch["y"])
        np.savez("grads.npz", **session.gradients())
        print("losses:", [session.train_step(batch["x"], batch["y"]) for _ in range(3)])
    """), tmp_path, python)
    assert train.returncode == 0, train.stderr[-3000:]
    losses = [float(v) for v in train.stdout.split("losses:")[1].strip(" []\n").split(",")]
    assert losses[-1] < losses[0]
    edge_lbp.export_model(str(tmp_path / "model.onnx"), tmp_path / "ref", gradients="ort")
    reference = edge_lbp.load(tmp_path / "ref", "ort")
    reference.forward_backward(x, y)
    ours = np.load(tmp_path / "grads.npz")
    assert sorted(ours) == sorted(reference.artifact.trainable)
    for name in reference.artifact.trainable:
        want = reference.state.checkpoint.parameters[name].grad
        scale = max(float(np.abs(want).max()), 1e-6)
        np.testing.assert_allclose(ours[name], want, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def _python_examples():
    """Every Python block of the README and the docs, once each (the docs repeat the README's); architecture.md
    quotes code, it shows no example; deploy.md's blocks continue one another after its commands, and
    tests/test_docs.py runs that page whole."""
    pages = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                         if p.name not in ("architecture.md", "deploy.md"))]
    blocks = [block for page in pages for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]
    return list(dict.fromkeys(blocks))


def _sample_photos(folder, classes=("cat", "dog"), per_class=6):
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype="uint8")
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


@pytest.mark.slow
def test_readme_python_examples_run_from_the_repository_root(tmp_path):
    """A user's clone, the README's editable install, and every Python example of the README and the docs run from
    the clone's root
    (where the source folder `edge_lbp/` comes first on the path: setup.cfg's package_dir, through the editable
    install, maps edge_lbp.runtime to runtime/; the package adds nothing to its own search path)."""
    pytest.importorskip("torch", reason="the examples export with the workstation extra")
    clone = tmp_path / "clone"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes((ROOT / name).read_bytes())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # The package installs editable, as the README says; its requirements come from this environment's
    # site-packages, which a .pth adds behind the venv's own (no second torch download).
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    Path(site, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(clone)],
                             capture_output=True, text=True, env=env, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]

    def run(args):
        return subprocess.run([python, *args], cwd=clone, capture_output=True, text=True, env=env, timeout=1200)

    where = run(["-c", "import edge_lbp.runtime as r; print(r.__file__)"])
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()) == clone / "runtime" / "__init__.py"  # the source tree, as a user sees it
    export = run(["-m", "edge_lbp", "export", "vit-tiny", "-o", "artifacts/vit-tiny"])
    assert export.returncode == 0, export.stderr[-3000:]
    _sample_photos(clone / "photos")
    examples = _python_examples()
    assert len(examples) >= 4
    for code in examples:
        result = run(["-c", code])
        assert result.returncode == 0, f"example failed:\n{code}\n{result.stderr[-3000:]}"


def test_readme_folder_table_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| folder | installed as |"):]
    table = table[:table.index("\n\n")]
    rows = dict(re.findall(r"^\| `([\w/]+)/` \| (?:`([\w.]+)`|—) \|", table, re.M))
    packages = {"edge_lbp": "edge_lbp", "edge_lbp/core": "edge_lbp.core", "edge_lbp/methods": "edge_lbp.methods",
                "edge_lbp/cli": "edge_lbp.cli", "edge_lbp/fleet": "edge_lbp.fleet", "export": "edge_lbp.export",
                "runtime": "edge_lbp.runtime", "devices": "edge_lbp.devices", "tests": ""}
    assert rows == packages
    for folder in rows:
        assert (ROOT / folder).is_dir(), folder
    named = set(re.findall(r"`(\w+)`", table))
    listed = ("runtime", "edge_lbp/core", "edge_lbp/methods", "edge_lbp/cli")
    for module in [path for folder in listed for path in (ROOT / folder).glob("*.py")]:
        if module.stem != "__init__":
            assert module.stem in named, f"{module} is not in the README's folder table"


# Records every import of torch or onnxruntime that is attempted, found or not, and reports them at exit.
RECORD_WORKSTATION_IMPORTS = textwrap.dedent("""
    import atexit, importlib.abc, sys
    attempted = []
    class Record(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnxruntime"):
                attempted.append(name)
    sys.meta_path.insert(0, Record())
    atexit.register(lambda: print("workstation imports:", sorted(set(attempted))))
""")


@pytest.mark.slow
def test_demo_runs_on_a_device_only_install(tmp_path):
    """The board's first command: `pip install .` without extras, then `edge-lbp demo`, with a cold Numba cache.
    It adapts the packaged artifact to its accuracy line without importing (or trying to import) torch or
    onnxruntime, says that it compiles the kernels, and leaves the cache warm for the next run."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True,
                             env=env, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")

    def cache_state():
        doctor = subprocess.run([str(venv / "bin" / "edge-lbp"), "doctor", "--json"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert doctor.returncode == 0, doctor.stderr[-3000:]
        return __import__("json").loads(doctor.stdout)["numba"]["cache"]

    assert cache_state()["state"] == "cold"
    code = RECORD_WORKSTATION_IMPORTS + "import sys; from edge_lbp.cli import main; sys.exit(main(sys.argv[1:]))"
    demo = subprocess.run([python, "-c", code, "demo", "--epochs", "1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert demo.returncode == 0, demo.stderr[-3000:]
    print(demo.stdout)  # the measured run, for the record (pytest -s)
    assert "workstation imports: []" in demo.stdout
    assert re.search(r"accuracy after 1 epochs: [\d.]+% \(was [\d.]+%", demo.stdout), demo.stdout
    assert "1,205,640 parameters, packaged" in demo.stdout
    assert "kernels: compiling the Numba kernels for this machine (cold cache; only the first run" in demo.stdout
    assert re.search(r"kernels: compiled \d+ Numba kernels in \d+ s; later runs reuse them", demo.stdout)
    warm = cache_state()
    assert warm["state"] == "partly warm" and warm["kernels"]["edge_lbp.core.wht_kernels.project_grid"] == "fresh"
