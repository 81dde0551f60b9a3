"""Try bad inputs as a careless or hostile user would, and count how each one ends (README, "Reliability").

Every case runs in a fresh process (the CLI, or a few lines of the API) on a small artifact and data made here,
then is classified: one clear line (exit non-zero, or a warning, with no traceback), a traceback, silently
accepted (exit 0 and not a word), and whether a checkpoint that was there changed (data lost).

    python tests/benchmarks/probe_bad_inputs.py [--out DIR]
"""
import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


API_ERRORS = {"ValueError", "OSError", "FileNotFoundError", "NonFiniteStep", "ArtifactError", "CheckpointError",
              "KeyError", "Unsupported"}


def run(args, cwd, python=False):
    command = [sys.executable, "-c", args] if python else [sys.executable, "-m", "edge_lbp", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def digest(folder):
    # The lock file records who holds the folder; it is not data.
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).glob("*"))
            if p.is_file() and p.name != ".lock"}


def edit_manifest(src, dst, change):
    shutil.copytree(src, dst)
    path = Path(dst) / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))
    return dst


def npz(path, **arrays):
    base = {"x_train": np.zeros((8, 32, 32, 3), np.uint8), "y_train": np.arange(8) % 3}
    np.savez(path, **{**base, **arrays})
    return path


def cases(w):
    """(name, how to run, whether a checkpoint folder must stay unchanged)."""
    art, data, ckpt = str(w / "art"), str(w / "data.npz"), str(w / "ckpt")
    train = ["train", art, "--data", data, "--threads", "1", "--epochs", "1", "--batch-size", "4"]
    rewrite = {"manifest []": lambda m: [], "manifest null": lambda m: None,
               "graphs {}": lambda m: {**m, "graphs": {}}, "inputs []": lambda m: {**m, "inputs": []},
               "schema 2": lambda m: {**m, "schema_version": 2},
               "path ../": lambda m: {**m, "graphs": {**m["graphs"], "training": "../x.onnx"}},
               "params unlisted": lambda m: {**m, "checksums": {k: v for k, v in m["checksums"].items()
                                                                if k != "params.safetensors"}},
               "trainable str": lambda m: {**m, "trainable": "w"}}
    for name, change in rewrite.items():
        folder = edit_manifest(art, w / f"m-{len(name)}-{abs(hash(name))}", change)
        yield f"artifact: {name}", ["train", str(folder), "--data", data, "--epochs", "1"], False
    tampered = w / "tampered"
    shutil.copytree(art, tampered)
    (tampered / "params.safetensors").write_bytes(b"0" + (tampered / "params.safetensors").read_bytes()[1:])
    yield "artifact: params changed", ["train", str(tampered), "--data", data], False
    extra = w / "extra"
    shutil.copytree(art, extra)
    (extra / "notes.txt").write_text("?")
    yield "artifact: unlisted file", ["train", str(extra), "--data", data], False
    yield "artifact: no such folder", ["train", str(w / "nope"), "--data", data], False
    bad_npz = {"float labels": {"y_train": np.linspace(0, 2, 8)}, "one-hot labels": {"y_train": np.eye(3)[[0] * 8]},
               "negative label": {"y_train": -(np.arange(8) % 2)}, "label 99": {"y_train": np.full(8, 99)},
               "short label_names": {"label_names": np.array(["a"])},
               "float images": {"x_train": np.zeros((8, 32, 32))},
               "x/y lengths": {"y_train": np.arange(3)}}
    for name, arrays in bad_npz.items():
        path = npz(w / f"n-{abs(hash(name))}.npz", **arrays)
        yield f"data: {name}", ["train", art, "--data", str(path), "--epochs", "1"], False
    (w / "notzip.npz").write_bytes(b"not a zip")
    np.savez(w / "empty.npz")
    (w / "emptydir").mkdir()
    yield "data: not a zip", ["train", art, "--data", str(w / "notzip.npz")], False
    yield "data: empty npz", ["train", art, "--data", str(w / "empty.npz")], False
    yield "data: empty folder", ["train", art, "--data", str(w / "emptydir")], False
    yield "data: missing", ["train", art, "--data", str(w / "missing")], False
    yield "data: one class", ["train", art, "--data", str(npz(w / "one.npz", y_train=np.zeros(8, np.int64)))], False
    for option, value in [("--batch-size", "0"), ("--epochs", "0"), ("--threads", "0"), ("--threads", "999"),
                          ("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1"), ("--accumulate", "0"),
                          ("--clip-norm", "0"), ("--engine", "tpu"), ("--batch-size", "x")]:
        yield f"option: {option} {value}", [*train, option, value], False
    (w / "file").write_text("x")
    yield "output: --export-onnx unwritable", [*train, "--export-onnx", str(w / "file" / "a.onnx")], False
    yield "output: --checkpoint unwritable", [*train, "--checkpoint", str(w / "file" / "c")], False
    yield "output: profile --out unwritable", ["profile", art, "--out", str(w / "file" / "p"), "--steps", "1"], False
    yield "resume: without --checkpoint", [*train, "--resume"], False
    yield "resume: empty folder", [*train, "--resume", "--checkpoint", str(w / "emptydir")], False
    yield "resume: checkpoint exists, no --resume", [*train, "--checkpoint", ckpt], True
    yield "resume: another artifact", ["train", str(w / "head"), "--data", data, "--checkpoint", ckpt,
                                       "--resume"], True
    yield "diverging: --lr 1e30", [*train, "--lr", "1e30", "--epochs", "3", "--max-rejected", "2",
                                   "--checkpoint", str(w / "ckpt-diverge")], False
    yield "memory: --batch-size 10^7", ["profile", art, "--batch-size", "10000000", "--steps", "1",
                                        "--out", str(w / "p")], False
    yield "export: os:system", ["export", "os:system", "-o", str(w / "x1")], False
    yield "export: missing .onnx", ["export", str(w / "none.onnx"), "-o", str(w / "x2")], False
    yield "export: --lbp bogus", ["export", "vit-tiny", "-o", str(w / "x3"), "--lbp", "bogus"], False
    yield "export: override matches nothing", ["export", "vit-tiny", "-o", str(w / "x4"), "--lbp",
                                               "lp-tri:4,nothing.*=none"], False
    yield "export: --grid 5x5", ["export", "vit-tiny", "-o", str(w / "x5"), "--grid", "5x5"], False
    api = ("import numpy as np, edge_lbp\ns = edge_lbp.load({art!r})\n"
           "x = np.zeros((2, 3, 32, 32), np.float32)\n").format(art=art)
    for name, line in [("NaN pixels", "x[0, 0, 0, 0] = np.nan; s.train_step(x, np.array([0, 1]))"),
                       ("label -1", "s.train_step(x, np.array([0, -1]))"),
                       ("float labels", "s.train_step(x, np.array([0.5, 1.0]))"),
                       ("wrong input shape", "s.train_step(np.zeros((2, 3, 8, 8), np.float32), np.array([0, 1]))"),
                       ("parameter shape", "s.state.set_parameters({s.artifact.trainable[0]: np.zeros(1)})")]:
        yield f"api: {name}", ("python", api + line), False


def classify(result, api=False):
    """From the CLI a traceback is a failure; from the API an exception is the answer, and a clear one is an
    input error (ValueError or OSError, or a subclass) whose one-line message names the cause."""
    if api and result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [""])[-1]
        return "clear" if last.split(":")[0].split(".")[-1] in API_ERRORS else "traceback"
    if "Traceback" in result.stderr:
        return "traceback"
    if result.returncode != 0 or result.stderr.strip():
        return "clear"
    return "silent"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="keep the work folder here (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.out or tempfile.mkdtemp(prefix="edge_lbp_probe_"))
    work.mkdir(parents=True, exist_ok=True)
    from edge_lbp.methods import export_model

    export_model("vit-tiny", work / "art")
    export_model("vit-tiny", work / "head", method="head")
    rng = np.random.default_rng(0)
    npz(work / "data.npz", x_train=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    assert run(["train", str(work / "art"), "--data", str(work / "data.npz"), "--epochs", "1", "--threads", "1",
                "--checkpoint", str(work / "ckpt")], work).returncode == 0
    counts = {"clear": 0, "traceback": 0, "silent": 0, "lost": 0}
    for name, how, keeps_checkpoint in cases(work):
        before = digest(work / "ckpt")
        result = run(how[1], work, python=True) if how[0] == "python" else run(how, work)
        kind = classify(result, api=how[0] == "python")
        lost = keeps_checkpoint and digest(work / "ckpt") != before
        counts[kind] += 1
        counts["lost"] += lost
        last = (result.stderr.strip().splitlines() or [""])[-1][:110]
        print(f"{kind:<9} {'LOST ' if lost else ''}{name:<40} {last}", flush=True)
    total = counts["clear"] + counts["traceback"] + counts["silent"]
    print(f"\n{total} inputs: {counts['clear']} one clear line, {counts['traceback']} tracebacks, "
          f"{counts['silent']} silently accepted, {counts['lost']} lost data")


if __name__ == "__main__":
    main()
