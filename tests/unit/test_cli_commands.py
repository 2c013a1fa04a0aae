"""The lazily assembled command line lists exactly the commands the modules define."""

import importlib

from click.testing import CliRunner

from qdeploy.cli import COMMAND_MODULES, main


def test_every_module_command_is_reachable_and_nothing_else():
    defined = {}
    for module in set(COMMAND_MODULES.values()):
        for command in importlib.import_module(f"qdeploy.cli.{module}").COMMANDS:
            defined[command.name] = module
    assert defined == COMMAND_MODULES


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMAND_MODULES:
        assert f"\n  {name} " in result.output, name


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(main, ["wrokers"])
    assert result.exit_code == 2 and "No such command 'wrokers'" in result.output
