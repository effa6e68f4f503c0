"""The ``feedbackloop`` command line: one module a command, settings built once, help for everything."""

from __future__ import annotations

import argparse
import inspect

import pytest

from feedbackloop import cli, stack
from feedbackloop.settings import Settings


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_is_add_parser_and_run_in_the_module_that_implements_it():
    runs = {module.run: module for module in cli.COMMANDS}
    for module in cli.COMMANDS:
        assert list(inspect.signature(module.run).parameters)[:2] == ["args", "settings"], module.__name__
    for name, parser in commands().items():
        assert parser.get_default("func") in runs, name
    assert len(commands()) == len(cli.COMMANDS)


def test_every_command_and_option_has_a_help_line(capsys):
    missing = [("feedbackloop", a.dest) for a in cli.parser()._actions if not a.help]
    for name, parser in commands().items():
        missing += [(name, a.dest) for a in parser._actions if not a.help]
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        assert done.value.code == 0
        assert "default: None" not in capsys.readouterr().out, name
    assert missing == []
    assert all(a.help for a in cli.parser()._subparsers._group_actions[0]._choices_actions)


def test_settings_are_built_once_from_the_environment_the_config_file_and_the_global_options(
        monkeypatch, tmp_path, capsys):
    built, seen = [], []
    from_env = Settings.from_env.__func__
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls, env=None: built.append(env) or from_env(cls, env)))
    monkeypatch.setattr(stack, "run", lambda args, settings: seen.append(settings) or 0)
    monkeypatch.delenv("FEEDBACKLOOP_BUDGET_PER_HOUR", raising=False)
    monkeypatch.setenv("FEEDBACKLOOP_TOPIC_PREFIX", "acme.")
    config = tmp_path / "loop.env"
    config.write_text("FEEDBACKLOOP_BUDGET_PER_HOUR=77\nFEEDBACKLOOP_TOPIC_PREFIX=ignored.\n")
    state = tmp_path / "state"
    assert cli.main(["--state-dir", str(state), "--config", str(config), "stack", "status"]) == 0
    assert len(built) == 1 and len(seen) == 1
    assert (seen[0].state_dir, seen[0].budget_per_hour, seen[0].topic_prefix) == (str(state), 77, "acme.")
    assert not state.exists(), "building the settings writes nothing"

    assert cli.main(["--config", str(tmp_path / "missing.env"), "stack", "status"]) == 1
    assert "cannot read the config file" in capsys.readouterr().err


def test_a_broken_setting_stops_the_commands_that_need_settings_but_not_keygen(monkeypatch, capsys):
    monkeypatch.setenv("FEEDBACKLOOP_MODEL_SIGNING_KEY", "not-a-key")
    assert cli.main(["stack", "status"]) == 1
    assert "FEEDBACKLOOP_MODEL_SIGNING_KEY is not an Ed25519 key" in capsys.readouterr().err
    assert cli.main(["keygen"]) == 0  # the way out of a broken key must stay open
    assert "FEEDBACKLOOP_MODEL_VERIFY_KEY=" in capsys.readouterr().out


def test_demo_offline_replays_each_seed_through_rehearse_and_needs_no_stack(monkeypatch, tmp_path, capsys):
    from feedbackloop import datasets, demo

    monkeypatch.setattr(stack, "start", lambda *a, **k: pytest.fail("the offline demo started the stack"))
    report = tmp_path / "offline.json"
    argv = ["--state-dir", str(tmp_path), "demo", "--offline", "1-2", "--events", "1500", "--budget", "0.2",
            "--report", str(report)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = __import__("json").loads(report.read_text())["offline"]
    assert [r["seed"] for r in rows] == [1, 2] and out.startswith("seed   control accuracy")
    assert f"{rows[0]['control_accuracy']:.3f}" in out.splitlines()[1]
    # the same figures as rehearse with the demo's stream, annotators and settings for that seed
    traffic = demo.stream(datasets.load("bananas").rows, 2, events=1500)
    settings = Settings().replace(state_dir=str(tmp_path), budget_fraction=0.2, control_fraction=0.2, seed=2)
    alone = demo.rehearse(settings, traffic,
                          demo.team(traffic.truth.get, 2))
    last = max(alone["control_accuracy"], key=int)
    assert (rows[1]["version"], rows[1]["control_accuracy"]) == (last, alone["control_accuracy"][last])
    assert rows[1]["savings"]["ratio"] == (alone["savings"] or {}).get("ratio")

    assert cli.main(["demo", "--offline", "0", "--dataset", "nope.csv", "--label-column", "y"]) == 1
