"""One declaration per setting with one default (docs/architecture.md, "The monitor core and
its front doors"): DAVE, DAVEMonitor, the CLI and compare cannot disagree on a default."""

from __future__ import annotations

import inspect
from dataclasses import fields

from dave_lightning import DAVE, DAVEMonitor
from dave_lightning.attribution.settings import ENGINE, MONITOR_ENGINE, DAVESettings
from dave_lightning.cli import build_parser
from dave_lightning.compare import compare_checkpoints
from dave_lightning.evaluation import EvaluationOptions
from dave_lightning.monitor import MonitorSettings, option_defaults


def defaults(function: object) -> dict[str, object]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def test_dave_takes_every_engine_setting_with_the_declared_default() -> None:
    engine = defaults(DAVE.__init__)
    for setting in fields(DAVESettings):
        assert engine[setting.name] == getattr(ENGINE, setting.name), setting.name


def test_the_monitor_takes_every_option_with_the_declared_default() -> None:
    monitor = defaults(DAVEMonitor.__init__)
    declared = option_defaults()
    assert set(monitor) - {"probe"} == set(declared)
    for name, value in declared.items():
        assert monitor[name] == value, name
    assert declared["n_samples"] == MONITOR_ENGINE.n_samples
    assert declared["deletion_steps"] == EvaluationOptions().deletion_steps


def test_compare_defaults_are_the_monitors() -> None:
    compare = defaults(compare_checkpoints)
    assert compare["engine"] is None and compare["options"] is None
    assert compare["num_probe"] == MonitorSettings().num_probe


def test_the_cli_restates_no_default() -> None:
    """Every engine option of explain and compare, and every evaluation option of compare,
    defaults to "not given", so the handler fills it from the declaration (DAVESettings() or
    the monitor's). (explain's --target is its own: a class index or "pred".)"""
    engine = {f.name for f in fields(DAVESettings)}
    declared = {"explain": engine, "compare": engine | {f.name for f in fields(EvaluationOptions)}}
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for command in ("explain", "compare"):
        actions = commands[command]._actions
        options = [a for a in actions if a.dest in declared[command]]
        assert options, command
        restated = {a.dest: a.default for a in options if a.default is not None}
        assert not restated, f"{command} restates defaults {restated}"
