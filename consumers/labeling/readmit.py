"""``feedbackloop readmit``: let an annotator the gold checks paused take tasks again.

It writes to the queue's SQLite file, beside a running service (whose audit
shipper sends the ``readmit`` event); the HTTP way is
``POST /api/review/annotators/{id}/readmit`` with a reviewer's token. Without
an annotator it lists who is paused. Imports stay light until the command runs.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="feedbackloop")
>>> _ = add_parser(parser.add_subparsers())
>>> args = parser.parse_args(["readmit", "ann", "--by", "rev"])
>>> args.annotator, args.by, args.func is run
('ann', 'rev', True)
"""

from __future__ import annotations

import argparse
import sys

from feedbackloop.settings import Settings


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``readmit`` command to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "readmit", help="let an annotator paused by the gold checks take tasks again",
        description="Re-admits an annotator the labeling service paused (their gold accuracy fell under "
                    "FEEDBACKLOOP_GATE_THRESHOLD): they are calibrated again on gold items. Writes to the "
                    "queue's file; a running service sends the audit event. Without ANNOTATOR, lists who is "
                    "paused.")
    p.add_argument("annotator", nargs="?", help="the annotator to re-admit (none: list the paused)")
    p.add_argument("--by", default="cli", help="the reviewer's name, for the audit log")
    p.add_argument("--db", help="the queue's SQLite file (default: under the state directory)")
    p.set_defaults(func=run)
    return p


def run(args, settings: Settings, out=None) -> int:
    """Re-admit ``args.annotator``, or list the paused; 1 if they are not paused."""
    from consumers.labeling.gating import readmit
    from consumers.labeling.service import default_db
    from consumers.labeling.store import Store, TaskError

    out = out or sys.stdout
    store = Store(args.db or default_db(settings))
    try:
        if not args.annotator:
            for g in store.gates():
                if g["state"] == "paused":
                    print(f"{g['annotator_id']}\tpaused by {g['by']}\t{g['gold_correct']} of {g['gold_checks']} "
                          f"gold right\t{g['reason']}", file=out)
            return 0
        try:
            readmit(store, args.annotator, args.by, settings.gate_threshold)
        except TaskError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{args.annotator} re-admitted by {args.by}", file=out)
        return 0
    finally:
        store.close()
