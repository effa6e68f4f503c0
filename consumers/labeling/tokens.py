"""Who may do what: annotator tokens and roles.

Every request carries ``Authorization: Bearer <token>``. A token names one
annotator and one role; roles are ordered, each allowed what the ones before
it are:

* ``annotator``: pull tasks, label, skip, flag as ambiguous;
* ``reviewer``: also see flagged tasks and resolve them;
* ``admin``: also see every annotator's figures and put tasks back in the queue.

Tokens come from ``FEEDBACKLOOP_LABELING_TOKENS`` (``token:annotator_id:role``
entries separated by commas), or from the file named by
``FEEDBACKLOOP_LABELING_TOKENS_FILE`` (one entry a line, ``#`` comments), or
are minted at start. Only a hash of each token is kept in memory.

>>> tokens = Tokens.parse("s3cret-1:ann:annotator, s3cret-2:rev:reviewer")
>>> tokens.get("s3cret-2")
Annotator(annotator_id='rev', role='reviewer')
>>> tokens.get("guess") is None
True
>>> tokens.get("s3cret-1").may("reviewer")
False
>>> token = tokens.mint("you", "admin")
>>> tokens.get(token).may("reviewer")
True
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Mapping, NamedTuple

ROLES = ("annotator", "reviewer", "admin")


class Annotator(NamedTuple):
    """The person behind a token."""

    annotator_id: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this annotator's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """Token -> :class:`Annotator`."""

    def __init__(self):
        self._by_digest: dict[bytes, Annotator] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def add(self, token: str, annotator_id: str, role: str = "annotator") -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: choose {', '.join(ROLES)}")
        if len(token) < 8 or not annotator_id:
            raise ValueError(f"token of {annotator_id!r}: a token needs 8 characters or more, and an annotator id")
        self._by_digest[_digest(token)] = Annotator(annotator_id, role)

    def mint(self, annotator_id: str, role: str = "annotator") -> str:
        """A new random token for ``annotator_id``, valid from now on."""
        token = secrets.token_urlsafe(18)
        self.add(token, annotator_id, role)
        return token

    def get(self, token: str | None) -> Annotator | None:
        return self._by_digest.get(_digest(token)) if token else None

    @classmethod
    def parse(cls, text: str) -> "Tokens":
        """From ``token:annotator_id:role`` entries, separated by commas or new lines."""
        tokens = cls()
        for n, entry in enumerate(text.replace(",", "\n").splitlines(), start=1):
            entry = entry.split("#", 1)[0].strip()
            if not entry:
                continue
            parts = [p.strip() for p in entry.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError(f"token entry {n}: expected token:annotator_id:role")
            tokens.add(*parts)
        return tokens

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Tokens":
        """From ``FEEDBACKLOOP_LABELING_TOKENS`` and ``FEEDBACKLOOP_LABELING_TOKENS_FILE``."""
        env = os.environ if env is None else env
        text = env.get("FEEDBACKLOOP_LABELING_TOKENS", "")
        path = env.get("FEEDBACKLOOP_LABELING_TOKENS_FILE")
        if path:
            text += "\n" + Path(path).read_text()
        return cls.parse(text)
