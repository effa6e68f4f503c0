"""The terminal labeler: one task at a time, with why it was chosen.

``feedbackloop label`` pulls the next task from ``labeling.tasks``, shows the
item, the suggested label, the model's confidence and the reasons in plain
words, and sends the annotator's answer to ``labels``. Whatever comes from the
task is shown through :func:`printable`: an escape sequence in an item's text
is shown, never obeyed by the terminal.

>>> print(explain({"reasons": ["uncertain", "disagreement"], "kind": "prediction",
...     "signals": {"margin": 0.04}, "suggested_label": "a", "confidence": 0.52,
...     "predicted_label": "a", "user_label": None, "note": None, "selection_probability": 0.2}))
the model is unsure: 52% for 'a', margin 4 points
the production model and the shadow model pick different labels
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
import unicodedata
import uuid

from confluent_kafka import Consumer, Producer

from feedbackloop.settings import Settings
from schemas import codec
from streams import events


def explain(task: dict) -> str:
    """Why the task was chosen, one plain sentence per reason."""
    lines = []
    for reason in task["reasons"]:
        if reason == "uncertain":
            margin = task["signals"].get("margin", 0.0)
            lines.append(f"the model is unsure: {task['confidence']:.0%} for {task['suggested_label']!r}, "
                         f"margin {margin * 100:.0f} points")
        elif reason == "disagreement":
            lines.append("the production model and the shadow model pick different labels")
        elif reason == "override":
            lines.append(f"a user overrode the model: it said {task['predicted_label']!r}, "
                         f"the user chose {task['user_label']!r}")
        elif reason == "appeal":
            note = f": {task['note']!r}" if task.get("note") else ""
            lines.append(f"a user appealed the model's answer {task['predicted_label']!r}{note}")
        elif reason == "control":
            lines.append(f"random control sample (chosen with probability {task['selection_probability']:.1%})")
        else:
            lines.append(reason)
    return "\n".join(lines)


def printable(text: str, multiline: bool = False) -> str:
    r"""``text`` safe to print on a terminal: control characters (escape sequences
    begin with one), invisible format characters such as bidirectional overrides,
    and lone surrogates are written out escaped; with ``multiline``, new lines stay.

    >>> print(printable("\x1b[2J\x1b]0;pwned\x07ham\u202eeps\r\nnext"))
    \x1b[2J\x1b]0;pwned\x07ham\u202eeps\r\nnext
    >>> print(printable("two\nlines\tand caf\u00e9", multiline=True))
    two
    lines\tand café
    """
    return "".join(ch if (ch == "\n" and multiline) or unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


def show(task: dict, out=sys.stdout) -> None:
    print("\n" + "=" * 60, file=out)
    print(f"item {printable(task['item_id'])}   (task {printable(task['task_id'])})", file=out)
    if task.get("text"):
        print("\n  " + printable(task["text"], multiline=True).replace("\n", "\n  ") + "\n", file=out)
    for name, value in sorted(task["features"].items()):
        print(f"  {printable(name):>24} = {value:.4g}", file=out)
    print(f"\nwhy: {printable(explain(task), multiline=True)}", file=out)
    if task.get("multi_label") and task.get("suggested_labels") is not None:
        print(f"suggested: {printable(', '.join(task['suggested_labels']) or 'none of the labels')} "
              f"(confidence {task['confidence']:.0%})", file=out)
    else:
        print(f"suggested: {task['suggested_label']!r} (confidence {task['confidence']:.0%})", file=out)
    for i, label in enumerate(task["label_set"], start=1):
        print(f"  [{i}] {printable(label)}", file=out)
    if task.get("multi_label"):
        print("Several may apply: their numbers (1,3), none if no label does, Enter to accept the suggestion, "
              "s to skip, q to quit.", file=out)
    else:
        print("Enter to accept the suggestion, a number to choose, s to skip, q to quit.", file=out)


def ask(task: dict, read=input) -> str | list[str] | None:
    """The chosen label (on a multi-label task, the list of labels that apply), None to skip;
    raises EOFError to quit.

    >>> t = {"label_set": ["cat", "dog", "fox"], "multi_label": True, "suggested_labels": ["dog"]}
    >>> ask(t, read=lambda _: "1, 3"), ask(t, read=lambda _: "none"), ask(t, read=lambda _: "")
    (['cat', 'fox'], [], ['dog'])
    """
    if task.get("multi_label"):
        return _ask_set(task, read)
    labels = task["label_set"]
    while True:
        answer = read("> ").strip().lower()
        if answer == "" and task["suggested_label"] in labels:
            return task["suggested_label"]
        if answer == "s":
            return None
        if answer == "q":
            raise EOFError
        if answer.isdigit() and 1 <= int(answer) <= len(labels):
            return labels[int(answer) - 1]
        print(f"choose 1-{len(labels)}, Enter, s or q")


def _ask_set(task: dict, read) -> list[str] | None:
    """The labels that apply to a multi-label task: numbers joined by commas or spaces, or ``none``."""
    labels = task["label_set"]
    while True:
        answer = read("> ").strip().lower()
        if answer == "" and task.get("suggested_labels") is not None:
            return list(task["suggested_labels"])
        if answer == "s":
            return None
        if answer == "q":
            raise EOFError
        if answer in ("none", "0", "-"):
            return []
        numbers = answer.replace(",", " ").split()
        if numbers and all(n.isdigit() and 1 <= int(n) <= len(labels) for n in numbers):
            return [labels[i] for i in sorted({int(n) - 1 for n in numbers})]
        print(f"numbers 1-{len(labels)} separated by commas (1,3), none, "
              f"{'Enter, ' if task.get('suggested_labels') is not None else ''}s or q")


def label_tasks(settings: Settings, annotator: str | None = None, limit: int = 0) -> int:
    """Label tasks as ``annotator`` (default: the user name) until ``q``, Ctrl-C or ``limit`` labels."""
    annotator = annotator or getpass.getuser()
    consumer = Consumer({**settings.kafka_config(), "group.id": f"{settings.app_id}-terminal-labelers",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer(settings.kafka_config())
    consumer.subscribe([settings.topic("labeling.tasks")])
    done = 0
    try:
        while not limit or done < limit:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            _, task = codec.decode(message.value(), ("LabelingTask",))
            show(task)
            started = time.monotonic()
            label = ask(task)
            if label is not None:
                label, labels = (label, None) if isinstance(label, str) else events.set_label(label)
                record = events.label(event_id=str(uuid.uuid4()), task_id=task["task_id"], item_id=task["item_id"],
                                      label=label, annotator_id=annotator, ts=int(time.time() * 1000),
                                      duration_ms=int((time.monotonic() - started) * 1000), note=None,
                                      guideline_version=task["guideline_version"], labels=labels)
                producer.produce(settings.topic("labels"), codec.encode("Label", record), key=task["task_id"].encode())
                producer.flush(10)
                done += 1
                print(f"sent {label!r} ({done} labeled)" if labels is None else
                      f"sent {', '.join(labels) or 'none of the labels'} ({done} labeled)")
            consumer.commit(message, asynchronous=False)
    except (EOFError, KeyboardInterrupt):
        print()
    finally:
        consumer.close()
    return 0


# -- feedbackloop label ------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``label`` command to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "label", help="label tasks in the terminal",
        description="Pulls the next task from labeling.tasks, shows the item, the suggested label, the model's "
                    "confidence and why it was chosen, and sends your label.")
    p.add_argument("--annotator", default=None, help="your annotator id (default: your user name)")
    p.add_argument("--limit", type=int, default=0, help="stop after this many labels (0: no limit)")
    p.set_defaults(func=run)
    return p


def run(args, settings: Settings) -> int:
    """``feedbackloop label``."""
    return label_tasks(settings, annotator=args.annotator, limit=args.limit)
