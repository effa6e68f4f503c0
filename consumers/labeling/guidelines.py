"""The guidelines the labeling service shows, read from a file or a directory, with their versions.

``Settings.guidelines_path`` (or ``serve-labeling --guidelines``) names one
markdown file (a guideline for every task) or a directory of them (``*.md``,
one per label set; see :mod:`streams.labels.guidelines` for the format). The
files are read again when they change. Every guideline the service starts to
show, and every change of one, is a version: recorded in the queue's store (the
text too), and sent as an audit event (action ``guideline``, the version as
JSON in ``detail``) that ClickHouse keeps in ``guideline_versions``. A task is
shown with the version of its label set's guideline, and its label inherits it.

>>> import tempfile
>>> from consumers.labeling.store import Store
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "spam.md").write_text(EXAMPLE)
>>> store = Store(":memory:")
>>> book = Guidebook(folder, store)
>>> g, v = book.for_labels(["spam", "ham"])
>>> g.title, v
('Spam or ham', '1-...')
>>> _ = (folder / "spam.md").write_text(EXAMPLE + "\\nWhen unsure, flag it.\\n")
>>> book.for_labels(["spam", "ham"])[1].startswith("2-")
True
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from consumers.labeling import audit
from consumers.labeling.store import Store
from streams.labels.guidelines import EXAMPLE, Guideline, choose, next_sequence, parse, version

__all__ = ["Guidebook", "EXAMPLE"]

log = logging.getLogger("feedbackloop.labeling")

#: Characters of a guideline's text sent with its version (an audit event's string limit is 65,536).
MAX_CONTENT = 60_000


class Guidebook:
    """The guidelines under ``path`` (a markdown file or a directory of them), versioned in ``store``.

    ``static`` is a guideline given as ``{"text": ..., "labels": {label: meaning}}``
    instead of a path (unversioned: its version is empty).
    """

    def __init__(self, path: str | Path | None, store: Store, static: dict | None = None):
        self.path = Path(path) if path else None
        self.store = store
        self.static = static or {}
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._guidelines: list[tuple[Guideline, str]] = []
        if self.path is not None and not self.path.exists():
            raise FileNotFoundError(f"no guidelines at {self.path}")

    def _files(self) -> list[Path]:
        if self.path is None:
            return []
        return sorted(self.path.glob("*.md")) if self.path.is_dir() else [self.path]

    def _reload(self) -> None:
        """Read the files again if any changed, and version what changed."""
        files = self._files()
        stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        if stamp == self._stamp:
            return
        loaded = []
        for f in files:
            g = parse(f.read_text(encoding="utf-8"))
            sequence, new = next_sequence(self.store.guideline_history(g.key), g.digest)
            name = version(sequence, g.digest)
            if new:
                with self.store.transaction():
                    self.store.record_guideline(g.key, sequence, g.digest, g.content)
                    self.store.audit(audit.event("guideline", "", "", "service", None, json.dumps({
                        "label_set": g.key, "sequence": sequence, "version": name, "digest": g.digest,
                        "title": g.title, "file": f.name, "content": g.content[:MAX_CONTENT]})))
                log.info("guideline %s for %s: version %s", f.name, g.key, name)
            loaded.append((g, name))
        self._guidelines, self._stamp = loaded, stamp

    def for_labels(self, label_set: list[str]) -> tuple[Guideline | None, str]:
        """The guideline for a task of ``label_set`` and its version (None and ``""`` if none fits)."""
        with self._lock:
            try:
                self._reload()
            except (OSError, UnicodeDecodeError) as exc:  # keep showing what was read last
                log.warning("guidelines at %s not read again: %s", self.path, exc)
            if not self._guidelines and self.static:
                return Guideline(content="", text=self.static.get("text") or "",
                                 meanings=dict(self.static.get("labels") or {})), ""
            chosen = choose([g for g, _ in self._guidelines], label_set)
            return (chosen, dict((id(g), v) for g, v in self._guidelines)[id(chosen)]) if chosen else (None, "")

