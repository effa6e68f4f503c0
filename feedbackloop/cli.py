"""The ``feedbackloop`` command: the one place that puts everything together.

Each command lives in the module that implements it, as ``add_parser(subparsers)``
and ``run(args, settings) -> int``. :func:`main` builds the parser from those
modules, builds the :class:`~feedbackloop.settings.Settings` once (environment,
config file, global options) and runs the chosen command with them. Nothing
else imports this module.

>>> args = parser().parse_args(["--state-dir", "/srv/loop", "stack", "status"])
>>> args.command, args.action, args.func is stack.run
('stack', 'status', True)
>>> settings(args, env={"FEEDBACKLOOP_BUDGET_PER_HOUR": "50"}).state_dir
'/srv/loop'
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Mapping

from consumers import terminal
from consumers.labeling import cli as labeling, readmit
from feedbackloop import agreement, bench, dashboard, demo, export, keys, simulate, stack, worker
from feedbackloop.settings import Settings

#: The commands, in the order ``--help`` lists them.
COMMANDS = (demo, stack, worker, terminal, labeling, readmit, dashboard, simulate, agreement, export, bench, keys)

EPILOG = """\
Every setting also comes from the environment (KAFKA_BOOTSTRAP_SERVERS,
CLICKHOUSE_DSN, FEEDBACKLOOP_TOPIC_PREFIX, FEEDBACKLOOP_BUDGET_PER_HOUR, ...)
or from a KEY=value file named by FEEDBACKLOOP_CONFIG (or --config); see the
README.

Start here:
  feedbackloop demo --events 5000 --report report.json   the whole loop, unattended
  feedbackloop stack up                                   a local Kafka + ClickHouse
  feedbackloop worker                                     the stream worker
  feedbackloop label                                      label tasks in the terminal
"""


def parser() -> argparse.ArgumentParser:
    """The ``feedbackloop`` parser: the global options and every command of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(
        prog="feedbackloop", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Turn a production model's mistakes and doubts into the few labels worth paying for.")
    p.add_argument("--state-dir", metavar="PATH",
                   help="where the local stack, the demo and the benchmark keep their data "
                        "(default: FEEDBACKLOOP_STATE_DIR, else .feedbackloop)")
    p.add_argument("--config", metavar="PATH",
                   help="a file of KEY=value settings, read after the environment (default: FEEDBACKLOOP_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="what to do; `feedbackloop COMMAND --help` describes it")
    for command in COMMANDS:
        command.add_parser(sub)
    for command in sub.choices.values():
        if command.formatter_class is argparse.ArgumentDefaultsHelpFormatter:
            command.formatter_class = _DefaultsHelpFormatter
    return p


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it has one (not "default: None" or "default: False")."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The settings of this run: ``env`` (default: the environment) and its config
    file, with the global options on top."""
    env = dict(os.environ if env is None else env)
    if getattr(args, "config", None):
        env["FEEDBACKLOOP_CONFIG"] = args.config
    if getattr(args, "state_dir", None):
        env["FEEDBACKLOOP_STATE_DIR"] = args.state_dir
    try:
        return Settings.from_env(env)
    except OSError as exc:
        raise ValueError(f"cannot read the config file: {exc}") from None


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM and a closed terminal (SIGHUP) stop a command the way Ctrl-C does,
    so its clean-up runs and stops what it started. Servers and the worker
    install their own handlers on top."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, build the settings once and run the command with them."""
    args = parser().parse_args(argv)
    try:
        try:
            config = settings(args)
        except ValueError:
            if getattr(args, "uses_settings", True):
                raise
            config = Settings()  # keygen, agreement, simulate: a broken setting must not block them
        with _terminate_as_interrupt():
            return args.func(args, config) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError) as exc:
        print(f"feedbackloop: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
