"""The docs (README.md and docs/, a MkDocs site): the site builds with no broken internal link or anchor, every
`edge-lbp` command line they show parses with the real CLI parser, and the short ones run."""
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edge_lbp import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELL = ("", "bash", "sh", "console")  # `text` blocks are output, `python` blocks code

# .ci/arm64 copies tests/ and the README without docs/: there is nothing to check then.
pytestmark = pytest.mark.skipif(not (ROOT / "mkdocs.yml").is_file(),
                                reason="the docs are not in this copy of the suite")


def _argv(words):
    """The edge-lbp arguments of one shell command, or None when it is another program."""
    if words[:1] == ["ssh"]:  # `ssh HOST edge-lbp ...`: the command the board runs
        words = words[2:]
    if words and Path(words[0]).name == "edge-lbp":  # also `.venv/bin/edge-lbp`, `~/edge-lbp/bin/edge-lbp`
        return words[1:]
    return None


def doc_commands():
    """(page, command line, argv) of every edge-lbp command in the fenced shell blocks of the README and docs/."""
    found = []
    for page in PAGES:
        for language, body in FENCE.findall(page.read_text()):
            if language not in SHELL:
                continue
            lines = body.replace("\\\n", " ").splitlines()  # a continued command is one line
            prompted = any(line.startswith("$ ") for line in lines)
            for line in lines:
                if prompted and not line.startswith("$ "):
                    continue  # the output shown after a prompted command
                words = shlex.split(line.removeprefix("$ "), comments=True)
                commands = [[]]
                for word in words:  # `a && b && edge-lbp ...`: each command on its own
                    if word == "&&":
                        commands.append([])
                    else:
                        commands[-1].append(word)
                for command in commands:
                    argv = _argv(command)
                    if argv is not None:
                        found.append((page.name, shlex.join(command), argv))
    return found


COMMANDS = doc_commands()


def test_the_docs_show_commands():
    """The extraction finds the commands the pages are known to show (so the parse test cannot pass on nothing)."""
    shown = {line for _, line, _ in COMMANDS}
    assert len(COMMANDS) >= 20, COMMANDS
    for expected in (".venv/bin/edge-lbp demo", "edge-lbp export vit-tiny -o artifacts/vit-tiny",
                     "edge-lbp plan artifacts/vit-c10-lbp --memory 512MB --batch-size 128"):
        assert expected in shown, sorted(shown)


@pytest.mark.parametrize("page, line, argv", COMMANDS, ids=[f"{page}: {line}" for page, line, _ in COMMANDS])
def test_every_command_shown_parses(page, line, argv):
    args = cli.build_parser().parse_args(argv)  # a wrong option or value raises cli._UsageError
    assert args.command, f"{page}: `{line}` names no command"


def _run(line, cwd):
    """Run a command exactly as a page shows it, as `python -m edge_lbp` in `cwd`, with the installed package."""
    assert line in {shown for _, shown, _ in COMMANDS}, f"`{line}` is no longer in the docs"
    result = subprocess.run([sys.executable, "-m", "edge_lbp", *shlex.split(line)[1:]], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"`{line}` exited {result.returncode}:\n{result.stdout[-2000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("line", ["edge-lbp ops", "edge-lbp doctor", "edge-lbp fleet app"])
def test_short_commands_run(line, tmp_path):
    assert _run(line, tmp_path).stdout.strip()


def test_export_then_profile_run(tmp_path):
    """The workflow's first command, then `profile` on what it wrote (20 s here with a cold Numba cache)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("exporting a preset needs torch (the export extra)")
    _run("edge-lbp export vit-tiny -o artifacts/vit-tiny", tmp_path)
    _run("edge-lbp profile artifacts/vit-tiny --steps 10 --out profile", tmp_path)
    assert (tmp_path / "profile" / "report.json").is_file()


def test_site_builds_with_every_link_and_anchor_resolved(tmp_path):
    """mkdocs.yml's `validation:` makes a broken internal link or anchor a warning, and --strict fails on it. The
    README is not part of the site, so its links into docs/ are checked against the built pages here."""
    for name in ("mkdocs", "material"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (the test extra)")
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    for page, anchor in re.findall(r"\]\(docs/([\w-]+)\.md(?:#([\w-]+))?\)", (ROOT / "README.md").read_text()):
        html = tmp_path / "site" / ("" if page == "index" else page) / "index.html"
        assert html.is_file(), f"README links to docs/{page}.md, which is not a page"
        assert not anchor or f'id="{anchor}"' in html.read_text(), f"README: no anchor docs/{page}.md#{anchor}"


def test_deploy_page_runs(tmp_path):
    """docs/deploy.md from start to end on a small image folder: its commands, then its Python blocks in order in
    one process (the committed tiny artifact stands in for artifacts/vit-tiny). The device's prediction for the
    new photo and ONNX Runtime's, fed from the model's metadata with and without the in-graph preprocessing, agree."""
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("the page's last blocks run ONNX Runtime, which is not installed")
    import shutil

    from PIL import Image
    from test_data import write_folder

    shutil.copytree(ROOT / "tests" / "fixtures" / "tiny_vit", tmp_path / "artifacts" / "vit-tiny")
    write_folder(tmp_path / "photos" / "train", per_class=4)
    write_folder(tmp_path / "photos" / "val", per_class=2, seed=1)
    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "new-photo.jpg")
    lines = [line for page, line, _ in COMMANDS if page == "deploy.md"]
    assert any(line.startswith("edge-lbp predict") for line in lines), lines
    for line in lines:
        _run(line, tmp_path)
    code = "\n".join(body for language, body in FENCE.findall((ROOT / "docs" / "deploy.md").read_text())
                     if language == "python")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    device, *elsewhere = result.stdout.splitlines()[-3:]
    assert device in {"ant", "bee", "cat"} and elsewhere == [device, device], result.stdout
