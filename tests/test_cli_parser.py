"""The command line's parser: each command module registers itself, building it stays light, and every help text
lists the values its option accepts."""
import argparse
import pkgutil
import subprocess
import sys

import pytest

from edge_lbp import cli


def _parsers(parser, name="edge-lbp"):
    """``(name, parser)`` for the program and every command and subcommand under it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {command}")


def _options():
    for name, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                yield name, parser, action


def test_building_the_parser_imports_nothing_heavy():
    code = ("import sys, edge_lbp.cli; edge_lbp.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnxruntime', 'numba', 'onnx'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_command_module_is_registered():
    modules = {m.name for m in pkgutil.iter_modules(cli.__path__)} - {"options"}
    assert modules == {command.__name__.rsplit(".", 1)[1] for command in cli.COMMANDS}
    assert all(callable(command.add_parser) for command in cli.COMMANDS)


def test_every_command_has_a_handler():
    for name, parser in _parsers(cli.build_parser()):
        has_commands = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        assert has_commands or callable(parser.get_default("run")), name


def test_every_help_lists_the_values_of_its_choices():
    checked = 0
    for name, parser, action in _options():
        if action.choices is None:
            continue
        help_text = parser._get_formatter()._expand_help(action) if action.help else ""
        # With no metavar, argparse itself shows {a,b,...} beside the option in the help.
        shown_by_argparse = action.metavar is None
        assert shown_by_argparse or all(str(c) in help_text for c in action.choices), (name, action.dest)
        checked += 1
    assert checked >= 5  # --engine (train, eval, profile), --optimizer, --schedule, --partition


@pytest.mark.parametrize("command", ["export", "demo"])
def test_lbp_help_names_every_selection(command):
    helps = {a.dest: a.help for n, _, a in _options() if n == f"edge-lbp {command}"}
    for value in ("none", "full", "lp-tri:", "energy:"):
        assert value in helps["lbp"], (command, value)


def test_method_help_names_every_method():
    from edge_lbp import methods

    helps = {a.dest: a.help for n, _, a in _options() if n == "edge-lbp export"}
    for method in methods.METHODS:
        for spelling in method.SYNTAX.split(" | "):
            assert spelling in helps["method"], spelling


def test_shared_options_read_their_values_from_their_owners():
    from edge_lbp.core.defaults import OPTIMIZERS
    from edge_lbp.runtime import ENGINES
    from edge_lbp.schedule import SCHEDULES

    choices = {(n, a.dest): tuple(a.choices) for n, _, a in _options() if a.choices}
    assert choices[("edge-lbp train", "schedule")] == SCHEDULES
    assert choices[("edge-lbp export", "optimizer")] == OPTIMIZERS
    assert choices[("edge-lbp eval", "engine")][1:] == ENGINES
    threads = {a.help for n, _, a in _options() if a.dest == "threads" and n != "edge-lbp fleet local"}
    assert threads == {cli.options.THREADS_HELP}
