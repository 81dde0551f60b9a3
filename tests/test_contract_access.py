"""The package's modules meet only through public names: no ``<object>._name`` read or written outside the module
that defines ``_name``, no ``self._x`` that the class inherits from another package (a method's session extends the
engine through its public hooks), no private name imported from another module, and no probing of a session (``hasattr(session, ...)``, or ``getattr`` with a
default): callers read what a session declares (``capabilities``, ``zo``, ``state``, ``optimizer``)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ["edge_lbp", "export", "runtime", "devices"]
# Private names of third-party packages that have no public equivalent, per file, with the reason.
THIRD_PARTY = {
    "edge_lbp/kernel_cache.py": ({"_cache", "_cache_file", "_index_path", "_source_stamp", "_version"},
                                 "Numba has no public API for where a kernel's cache index is and which stamp "
                                 "it checks; doctor reports cache warmth exactly as Numba decides it"),
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined(tree) -> set:
    """Every name this module defines: functions, classes, assigned names and its objects' own attributes
    (``self._y = ...``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _own(node.value):
            names.add(node.attr)
    return names


def _own(value) -> bool:
    """``self``, ``cls`` or ``super()``: the object's own attributes."""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def private_access(source: str, path: str = "<source>", package: frozenset = frozenset()) -> list:
    """``path:line: what`` for every private name this module reaches in another one; ``package``: the names the
    other modules of its folder define (a class may use what its own package defines)."""
    tree = ast.parse(source)
    defined, found = _defined(tree) | THIRD_PARTY.get(path, (set(),))[0], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in defined and (
                not _own(node.value) or node.attr not in package):
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found += [f"{path}:{node.lineno}: from {node.module} import {alias.name}" for alias in node.names
                      if _private(alias.name)]
    return found


def session_probes(source: str, path: str = "<source>") -> list:
    """``path:line: call`` for every ``hasattr(<session>, ...)`` and ``getattr(<session>, name, default)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args and (
                node.func.id == "hasattr" or node.func.id == "getattr" and len(node.args) == 3) \
                and "session" in ast.unparse(node.args[0]).lower():
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def _sources(folders):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT), path.read_text()


def _package_names(folder: Path) -> frozenset:
    """What the modules of one folder define."""
    return frozenset().union(*(_defined(ast.parse(p.read_text())) for p in folder.glob("*.py")))


def test_the_checks_catch_planted_violations():
    planted = """
from edge_lbp.runtime.numba_session import _backward_start
class Mine:
    def __init__(self):
        self._mine = 1

    def use(self, session, other):
        other._mine = self._mine  # defined here: this module's own business
        session._passes = 0
        if hasattr(session, "zo") or getattr(self.session, "zo", None):
            return session._feeds(None)
"""
    assert [f.split(": ", 1)[1] for f in private_access(planted)] == [
        "from edge_lbp.runtime.numba_session import _backward_start", "session._passes", "session._feeds"]
    inherited = "class Mine(NumbaSession):\n    def go(self, x):\n        return self._feeds(x), self._own_helper(x)\n"
    assert [f.split(": ", 1)[1] for f in private_access(inherited, package=frozenset({"_own_helper"}))] == [
        "self._feeds"]
    assert [f.split(": ", 1)[1] for f in session_probes(planted)] == [
        "hasattr(session, 'zo')", "getattr(self.session, 'zo', None)"]


def test_no_private_name_is_reached_across_modules():
    found = [f for path, source in _sources(PACKAGE)
             for f in private_access(source, str(path), _package_names((ROOT / path).parent))]
    assert not found, "\n".join(found)


def test_no_session_is_probed():
    found = [f for path, source in _sources([*PACKAGE, "tests"]) for f in session_probes(source, str(path))]
    assert not found, "\n".join(found)
