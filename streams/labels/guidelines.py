"""Labeling guidelines: markdown with worked examples, one per label set, versioned by content.

A guideline is a markdown text. What comes before the first ``##`` heading is
the general guideline (its ``#`` heading is the title); each ``## <label>``
section says what that label means, and the list items under its
``### Examples`` heading are the label's worked examples::

    # Spam or ham
    Judge the message, not the sender.

    ## spam
    Unsolicited selling.

    ### Examples
    - WIN a free cruise, reply YES
    - Cheap meds, no prescription

    ## ham
    Anything a person wrote to you.

The labels a guideline names are its ``## `` headings; a task gets the
guideline naming exactly its label set, or else the one sharing most labels
with it (:func:`choose`). Each change of a guideline is a new version: its
sequence number for that label set (1, 2, ...) and a hash of its text, as in
``"2-5f1c0e9a7b3d"`` (:func:`version`); tasks carry the version they were
shown with and labels inherit it. Nothing here reads a file: the labeling
service reads the file or directory (``Settings.guidelines_path``) and keeps
the history (:mod:`consumers.labeling.guidelines`).

>>> g = parse(EXAMPLE)
>>> g.title, g.labels, g.key
('Spam or ham', ('ham', 'spam'), 'ham|spam')
>>> g.examples["spam"]
['WIN a free cruise, reply YES', 'Cheap meds, no prescription']
>>> g.meanings["ham"]
'Anything a person wrote to you.'
>>> version(1, g.digest) == f"1-{g.digest[:12]}"
True
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["Guideline", "parse", "choose", "key", "version", "next_sequence", "EXAMPLE"]

EXAMPLE = """# Spam or ham
Judge the message, not the sender.

## spam
Unsolicited selling.

### Examples
- WIN a free cruise, reply YES
- Cheap meds, no prescription

## ham
Anything a person wrote to you.
"""

_HEADING = re.compile(r"^(#{1,3})\s+(.*?)\s*#*\s*$")
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*\S)\s*$")


def key(labels: Iterable[str]) -> str:
    """The key of a label set: its labels, sorted, joined by ``|`` (``*``: none named).

    >>> key(["spam", "ham"]), key([])
    ('ham|spam', '*')
    """
    labels = sorted(set(labels))
    return "|".join(labels) if labels else "*"


def version(sequence: int, digest: str) -> str:
    """The version name tasks and labels carry: the sequence number and 12 hex digits of the hash."""
    return f"{sequence}-{digest[:12]}"


def next_sequence(history: Iterable[tuple[int, str]], digest: str) -> tuple[int, bool]:
    """``(sequence, new)`` of a guideline whose text hashes to ``digest``, given the
    ``(sequence, digest)`` versions recorded for its label set: the newest one's
    sequence if the text is unchanged, else one more (``new``). A text changed
    back to an earlier one is a new version too: what annotators saw changed.

    >>> next_sequence([], "aa"), next_sequence([(1, "aa")], "aa"), next_sequence([(1, "aa"), (2, "bb")], "aa")
    ((1, True), (1, False), (3, True))
    """
    newest = max(history, default=None)
    if newest is not None and newest[1] == digest:
        return newest[0], False
    return (newest[0] + 1 if newest else 1), True


@dataclass(frozen=True)
class Guideline:
    """One guideline, parsed (see the module's text)."""

    content: str
    title: str = ""
    text: str = ""
    meanings: dict[str, str] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted(self.meanings))

    @property
    def key(self) -> str:
        return key(self.meanings)

    @property
    def digest(self) -> str:
        """SHA-256 of the text, as hex: equal texts, equal digests."""
        return hashlib.sha256(self.content.encode("utf-8")).hexdigest()


def parse(content: str) -> Guideline:
    """A :class:`Guideline` from its markdown (line endings normalised, outer blank lines dropped).

    A ``###`` heading other than ``Examples`` stays in the label's meaning;
    text under ``### Examples`` that is not a list item is left out.

    >>> g = parse("Just be careful.\\n## a\\nFirst.\\n### Examples\\n1. one\\n2) two\\n## b\\n")
    >>> g.title, g.text, g.meanings, g.examples
    ('', 'Just be careful.', {'a': 'First.', 'b': ''}, {'a': ['one', 'two'], 'b': []})
    """
    content = content.replace("\r\n", "\n").replace("\r", "\n").strip() + "\n"
    title, general, meanings, examples = "", [], {}, {}
    label, in_examples = None, False
    for line in content.split("\n"):
        heading = _HEADING.match(line)
        if heading and len(heading.group(1)) == 1 and label is None and not title:
            title = heading.group(2)
        elif heading and len(heading.group(1)) == 2:
            label, in_examples = heading.group(2), False
            meanings.setdefault(label, [])
            examples.setdefault(label, [])
        elif heading and len(heading.group(1)) == 3 and label is not None and heading.group(2).lower() == "examples":
            in_examples = True
        elif label is None:
            general.append(line)
        elif in_examples:
            item = _ITEM.match(line)
            if item:
                examples[label].append(item.group(1))
        else:
            meanings[label].append(line)
    return Guideline(content=content, title=title, text="\n".join(general).strip(),
                     meanings={k: "\n".join(v).strip() for k, v in meanings.items()}, examples=examples)


def choose(guidelines: Iterable[Guideline], label_set: Iterable[str]) -> Guideline | None:
    """The guideline for a task of ``label_set``: the one naming exactly those
    labels, else the one sharing most labels with it, else one naming no label
    (a guideline for every task); None if nothing fits.

    >>> a, b, any_ = parse("## x\\n## y"), parse("## y\\n## z\\n## w"), parse("Be careful.")
    >>> [choose([a, b, any_], s).key for s in (["y", "x"], ["w", "z"], ["q"])]
    ['x|y', 'w|y|z', '*']
    """
    wanted = set(label_set)
    best, best_score = None, (-1, -1)
    for g in guidelines:
        shared = len(wanted & set(g.meanings))
        if not g.meanings:
            score = (0, 0)
        elif shared == 0:
            continue
        else:
            score = (2 if set(g.meanings) == wanted else 1, shared)
        if score > best_score:
            best, best_score = g, score
    return best
