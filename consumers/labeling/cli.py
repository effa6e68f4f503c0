"""``feedbackloop serve-labeling``: the labeling service from the command line.

Wire it into a parser with :func:`add_parser`; the parsed arguments run with
:func:`run` and the settings. Imports stay light until the command runs.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="feedbackloop")
>>> _ = add_parser(parser.add_subparsers())
>>> args = parser.parse_args(["serve-labeling", "--port", "8080", "--mint", "ann", "--mint", "rev:reviewer"])
>>> args.port, args.mint, args.func is run
(8080, ['ann', 'rev:reviewer'], True)
"""

from __future__ import annotations

import argparse
import os
import sys

from feedbackloop.settings import Settings


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve-labeling`` command to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "serve-labeling", help="serve the labeling API and web UI to annotators",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Reads labeling.tasks into a durable queue and serves annotators over HTTP "
                    "(web UI at /, API description at /openapi.json); labels go to the labels topic. "
                    "Tokens come from FEEDBACKLOOP_LABELING_TOKENS ('token:annotator_id:role,...', roles: "
                    "annotator, reviewer, admin), FEEDBACKLOOP_LABELING_TOKENS_FILE (one entry a line, read again "
                    "when it changes: delete a line to revoke a token) and --mint; with none, an admin token "
                    "is minted. Each is printed as a link to open. A token needs 128 bits of entropy or more.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--db", help="the queue's SQLite file (default: under the state directory)")
    p.add_argument("--lease-seconds", type=float, default=600.0, help="how long a pulled task stays yours")
    p.add_argument("--guidelines", metavar="PATH",
                   help="the labeling guidelines, versioned: a markdown file, or a directory of them, one per label "
                        "set (FEEDBACKLOOP_GUIDELINES_PATH); or a fixed JSON {\"text\": ..., \"labels\": "
                        "{label: meaning}}")
    p.add_argument("--mint", action="append", default=[], metavar="ANNOTATOR[:ROLE]",
                   help="mint a token for an annotator and print its link (repeatable; role: annotator)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the service answers to, besides any IP address, localhost, --host and "
                        "this machine's name (repeatable; '*' for any, '.example.com' for a domain; also "
                        "FEEDBACKLOOP_LABELING_ALLOWED_HOSTS, comma-separated)")
    p.set_defaults(func=run)
    return p


def run(args, settings: Settings) -> int:
    """Run ``serve-labeling`` with parsed ``args`` and ``settings``. The tokens and the
    allowed host names come from the environment (``FEEDBACKLOOP_LABELING_*``), beside the settings."""
    from consumers.labeling.service import load_guidelines, serve
    from consumers.labeling.tokens import ROLES, Tokens
    from feedbackloop import keys, stack

    env = os.environ
    try:
        tokens = Tokens.from_env(env)
    except (OSError, ValueError) as exc:
        print(f"labeling tokens: {exc}", file=sys.stderr)
        return 2
    attached = stack.attach(settings, signing=False)
    if attached is None:
        print(stack.NO_KAFKA, file=sys.stderr)
        return 2
    settings = attached
    keys.verify_key(settings)  # no key, no service: the error says how to set one
    stack.ensure_topics(settings.kafka_config(), settings)
    minted = {}
    for spec in args.mint:
        who, _, role = spec.partition(":")
        if role and role not in ROLES:
            raise ValueError(f"--mint {spec}: unknown role {role!r}; choose {', '.join(ROLES)}")
        minted[who] = tokens.mint(who, role or "annotator")
    hosts = args.allowed_host + [h.strip() for h in env.get("FEEDBACKLOOP_LABELING_ALLOWED_HOSTS", "").split(",")
                                 if h.strip()]
    fixed = None
    if args.guidelines and args.guidelines.endswith(".json"):
        fixed = load_guidelines(args.guidelines)
    elif args.guidelines:
        settings = settings.replace(guidelines_path=args.guidelines)
    return serve(settings, args.host, args.port, tokens, args.db, args.lease_seconds,
                 fixed, announce=minted, allowed_hosts=hosts)


def main(argv: list[str] | None = None) -> int:
    """``python -m consumers.labeling.cli [options]``, the same as ``feedbackloop serve-labeling``,
    with settings from the environment."""
    parser = argparse.ArgumentParser(prog="python -m consumers.labeling.cli")
    add_parser(parser.add_subparsers(dest="command", required=True)).add_argument(
        "--state-dir", help="where the local stack keeps its data (default: .feedbackloop)")
    args = parser.parse_args(["serve-labeling", *(sys.argv[1:] if argv is None else argv)])
    env = dict(os.environ, **({"FEEDBACKLOOP_STATE_DIR": args.state_dir} if args.state_dir else {}))
    return args.func(args, Settings.from_env(env))


if __name__ == "__main__":
    sys.exit(main())
