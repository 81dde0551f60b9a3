"""The layer order of docs/architecture.md, checked on the source: no module imports a layer above its own, and
the exporter, the runtime and the board support do not import one another.

Imports are read from the source (``ast``), lazy ones inside functions included: an import that only runs on some
paths is still a dependency. Module names come from setup.cfg's ``package_dir``, the one map from folders to
installed names.
"""
import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module may import its own layer and the layers below it; the packages of one layer marked
# ``apart`` may not import one another.
LAYERS = [
    ("core", ("edge_lbp.core", "edge_lbp._version")),
    ("builders and engines", ("edge_lbp.export", "edge_lbp.runtime", "edge_lbp.devices")),
    ("methods", ("edge_lbp.methods",)),
    ("application", ("edge_lbp",)),  # everything else: the API, Trainer, data, plan, CLI, fleet
]
APART = ("edge_lbp.export", "edge_lbp.runtime", "edge_lbp.devices")


def _package_dirs():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    mapping = {"edge_lbp": "edge_lbp"}
    for line in config["options"]["package_dir"].strip().splitlines():
        name, folder = (part.strip() for part in line.split("="))
        mapping[name] = folder
    return mapping


def source_modules():
    """``{module name: path}`` of every module the package installs."""
    modules = {}
    for package, folder in _package_dirs().items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def imported(module: str, path: Path, known) -> set:
    """The edge_lbp modules ``module`` imports (``from P import X`` counts as ``P.X`` when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name == "edge_lbp" or name.startswith("edge_lbp.")}


def _layer(module: str) -> int:
    best = max((prefix for _, prefixes in LAYERS for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=len)
    return next(i for i, (_, prefixes) in enumerate(LAYERS) if best in prefixes)


def _apart(module: str):
    return next((p for p in APART if module == p or module.startswith(p + ".")), None)


def violations(modules, known=None) -> list:
    """One line per import that breaks the order, for the ``modules`` given (``known``: every module name)."""
    known, found = known or modules, []
    for module, path in modules.items():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for target in sorted(imported(module, path, known)):
            if _layer(target) > _layer(module):
                found.append(f"{where}: {module} ({LAYERS[_layer(module)][0]}) imports {target} "
                             f"({LAYERS[_layer(target)][0]})")
            elif _apart(module) and _apart(target) and _apart(module) != _apart(target):
                found.append(f"{where}: {module} imports {target}; {_apart(module)} and "
                             f"{_apart(target)} stay apart")
    return found


def test_no_module_imports_upward():
    modules = source_modules()
    assert "edge_lbp.core.artifact" in modules and "edge_lbp.runtime.kernels.linear" in modules
    assert violations(modules) == []


@pytest.mark.parametrize("module, source, expected", [
    ("edge_lbp.core.fake", "from edge_lbp.runtime import graph\n", "imports edge_lbp.runtime.graph"),
    ("edge_lbp.export.fake", "def f():\n    import edge_lbp.runtime.session\n", "stay apart"),
    ("edge_lbp.runtime.fake", "from edge_lbp import trainer\n", "imports edge_lbp.trainer (application)"),
    ("edge_lbp.runtime.fake", "from edge_lbp import __version__\n", "imports edge_lbp (application)"),
])
def test_the_check_finds_an_upward_import(tmp_path, module, source, expected):
    path = tmp_path / "fake.py"
    path.write_text(source)
    found = violations({module: path}, {**source_modules(), module: path})
    assert len(found) == 1 and expected in found[0], found


def test_a_lawful_import_passes(tmp_path):
    path = tmp_path / "fake.py"
    path.write_text("from edge_lbp.core import ops\nfrom edge_lbp.runtime import graph\n")
    assert violations({"edge_lbp.runtime.fake": path}, source_modules()) == []
