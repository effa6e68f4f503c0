"""Who may do what: annotator tokens and roles.

Every request carries ``Authorization: Bearer <token>``. A token names one
annotator and one role; roles are ordered, each allowed what the ones before
it are:

* ``annotator``: pull tasks, label, skip, flag as ambiguous;
* ``reviewer``: also see flagged tasks and resolve them;
* ``admin``: also see every annotator's figures and put tasks back in the queue.

Tokens come from ``FEEDBACKLOOP_LABELING_TOKENS`` (entries separated by
commas), from the file named by ``FEEDBACKLOOP_LABELING_TOKENS_FILE`` (one
entry a line, ``#`` comments), or are minted at start. An entry is
``token:annotator_id:role``, or ``sha256:<hex digest of the token>:annotator_id:role``
so that the file need not hold the token itself (:func:`entry` writes one).

A token needs at least :data:`MIN_BITS` bits of entropy (:func:`entropy_bits`),
that is 22 random URL-safe characters or more; :meth:`Tokens.mint` and
``python -c "import secrets; print(secrets.token_urlsafe(32))"`` make 256 bits.
Only the SHA-256 digest of a token is kept, and a request's token is looked up
by its digest: the time a lookup takes depends on that digest alone, which
tells a guesser nothing about any token (finding a token from its digest is a
preimage search over 128 bits or more).

Revoking a token needs no restart: the file is read again when it changes
(checked at most once a second), so deleting a line revokes that token. A file
that no longer parses revokes all its tokens, and says why in the log, until
it is fixed. Tokens from the environment and minted ones last as long as the
process; give the tokens you may need to revoke through the file.

>>> ann, rev = "Zq3vT8mW1xK5pR7yN2bC6dF9", "Hs4jL0aE7uQ2wX8cV5nB3mG1"
>>> tokens = Tokens.parse(f"{ann}:ann:annotator, {entry(rev, 'rev', 'reviewer')}")
>>> tokens.get(rev)
Annotator(annotator_id='rev', role='reviewer')
>>> tokens.get("guess") is None
True
>>> tokens.get(ann).may("reviewer")
False
>>> token = tokens.mint("you", "admin")
>>> tokens.get(token).may("reviewer")
True
>>> Tokens.parse("s3cret-1:adm:admin")
Traceback (most recent call last):
...
ValueError: token entry 1 (annotator 'adm'): about 49 bits of entropy, 128 or more are needed; make one with python -c "import secrets; print(secrets.token_urlsafe(32))"
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import string
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

ROLES = ("annotator", "reviewer", "admin")
#: Fewest bits of entropy a token may have.
MIN_BITS = 128
#: Seconds between two looks at the token file.
CHECK_EVERY = 1.0
#: Character classes a token's alphabet is estimated from.
_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits, string.punctuation)
#: Characters a token may not hold: they separate entries, fields and comments.
_RESERVED = set(":,#")
_HEX = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("feedbackloop.labeling")


class Annotator(NamedTuple):
    """The person behind a token."""

    annotator_id: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this annotator's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)


def entropy_bits(token: str) -> float:
    """Bits of entropy of ``token``, estimated as its length times log2 of the
    alphabet its character classes span (lower case, upper case, digits, punctuation).

    It is an upper bound: a token made of words or of one repeated character has
    far less, so make tokens at random.

    >>> round(entropy_bits("s3cret-1"))  # the 8-character token once accepted
    49
    >>> entropy_bits(secrets.token_urlsafe(32)) >= MIN_BITS
    True
    >>> round(entropy_bits("0123456789abcdef" * 2))  # 128 random bits in hex
    165
    """
    size = sum(len(c) for c in _CLASSES if any(ch in c for ch in token))
    return len(token) * math.log2(size) if size > 1 else 0.0


def digest(token: str) -> bytes:
    """The SHA-256 digest a token is kept as."""
    return hashlib.sha256(token.encode()).digest()


def entry(token: str, annotator_id: str, role: str = "annotator") -> str:
    """A token file line that holds the token's digest instead of the token.

    >>> entry("Zq3vT8mW1xK5pR7yN2bC6dF9", "ann")[:15]
    'sha256:002e15ac'
    """
    _check(token, annotator_id, role)
    return f"sha256:{digest(token).hex()}:{annotator_id}:{role}"


def _check_who(annotator_id: str, role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: choose {', '.join(ROLES)}")
    if not annotator_id:
        raise ValueError("a token needs an annotator id")


def _weakness(token: str) -> str | None:
    """What makes ``token`` unfit, in words, or None."""
    if any(ch in _RESERVED or ch not in string.printable or ch.isspace() for ch in token):
        return "a token is printable ASCII, without spaces, ':', ',' or '#'"
    bits = entropy_bits(token)
    if bits < MIN_BITS:
        return (f"about {bits:.0f} bits of entropy, {MIN_BITS} or more are needed; "
                "make one with python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    return None


def _check(token: str, annotator_id: str, role: str) -> None:
    _check_who(annotator_id, role)
    problem = _weakness(token)
    if problem:
        raise ValueError(f"token of {annotator_id!r}: {problem}")


def _parse(text: str) -> dict[bytes, Annotator]:
    """``{digest: Annotator}`` of ``text``'s entries, separated by commas or new lines."""
    out: dict[bytes, Annotator] = {}
    for n, line in enumerate(text.replace(",", "\n").splitlines(), start=1):
        parts = [p.strip() for p in line.split("#", 1)[0].split(":")]
        if parts == [""]:
            continue
        hashed = parts[0] == "sha256" and len(parts) in (3, 4) and _HEX.fullmatch(parts[1])
        if hashed:
            key, parts = bytes.fromhex(parts[1]), parts[2:]
        elif len(parts) in (2, 3):
            key, parts, problem = digest(parts[0]), parts[1:], _weakness(parts[0])
            if problem:
                raise ValueError(f"token entry {n} (annotator {parts[0]!r}): {problem}")
        else:
            raise ValueError(f"token entry {n}: expected token:annotator_id:role or sha256:<hex>:annotator_id:role")
        who, role = parts[0], parts[1] if len(parts) > 1 else "annotator"
        try:
            _check_who(who, role)
        except ValueError as exc:
            raise ValueError(f"token entry {n}: {exc}") from None
        out[key] = Annotator(who, role)
    return out


class Tokens:
    """Token -> :class:`Annotator`, from fixed entries and an optional token file
    that is read again whenever it changes (see the module's text)."""

    def __init__(self, path: str | Path | None = None, check_every: float = CHECK_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self._fixed: dict[bytes, Annotator] = {}
        self._filed: dict[bytes, Annotator] = {}
        self.path = Path(path) if path else None
        self.check_every = check_every
        self.clock = clock
        self._stamp: tuple | None = None
        self._checked = -math.inf
        self._lock = threading.Lock()
        if self.path is not None:
            self._filed = _parse(self.path.read_text(encoding="utf-8"))  # at start, a bad file is an error
            self._stamp = self._stat()
            self._checked = clock()

    def __len__(self) -> int:
        return len(self._fixed) + len(self._filed)

    def add(self, token: str, annotator_id: str, role: str = "annotator") -> None:
        """Accept ``token`` for ``annotator_id`` from now on (ValueError if it is too weak)."""
        _check(token, annotator_id, role)
        self._fixed[digest(token)] = Annotator(annotator_id, role)

    def mint(self, annotator_id: str, role: str = "annotator") -> str:
        """A new random token (256 bits) for ``annotator_id``, valid from now on."""
        token = secrets.token_urlsafe(32)
        self.add(token, annotator_id, role)
        return token

    def get(self, token: str | None) -> Annotator | None:
        """The annotator ``token`` belongs to, or None."""
        if not token:
            return None
        if self.path is not None and self.clock() - self._checked >= self.check_every:
            self._reload()
        key = digest(token)
        return self._filed.get(key) or self._fixed.get(key)

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _reload(self) -> None:
        with self._lock:
            self._checked = self.clock()
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                filed = _parse(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.error("token file %s: %s; its tokens are refused until it is fixed", self.path, exc)
                filed = {}
            else:
                log.info("token file %s read again: %d token(s)", self.path, len(filed))
            self._filed = filed

    @classmethod
    def parse(cls, text: str) -> "Tokens":
        """From ``token:annotator_id:role`` entries, separated by commas or new lines."""
        tokens = cls()
        tokens._fixed = _parse(text)
        return tokens

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Tokens":
        """From ``FEEDBACKLOOP_LABELING_TOKENS`` and ``FEEDBACKLOOP_LABELING_TOKENS_FILE`` (watched)."""
        env = os.environ if env is None else env
        tokens = cls(env.get("FEEDBACKLOOP_LABELING_TOKENS_FILE") or None)
        tokens._fixed = _parse(env.get("FEEDBACKLOOP_LABELING_TOKENS", ""))
        return tokens
