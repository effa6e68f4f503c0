"""Rate limits and lockout for the labeling service, in memory.

Three budgets, each a token bucket (``burst`` requests at once, refilled at
``rate`` a second):

* ``per_address``: every request from one client address, so a flood from one
  place is answered 429 (an office of annotators behind one address stays far
  below it);
* ``per_token``: every request made with one valid token, so a leaked token
  cannot be used to scrape the queue, and one annotator's runaway script does
  not starve the others;
* ``failures``: requests from one address with a missing or wrong token. Once
  spent, the address is locked out for ``lockout`` seconds from everything that
  needs a token, whatever token it sends, so a guesser cannot even tell a right
  guess from a wrong one.

A person labeling at full speed makes about one request a second; the defaults
leave ten times that per token. Each table keeps at most ``max_keys`` entries
(the least recently seen go first), so a scan from many addresses cannot
exhaust memory. State is per process and starts empty: with 128-bit tokens
the lockout is there to stop a flood, not to make guessing hard. Calls come
from the event loop only (no locking).

>>> now = [0.0]
>>> limits = RateLimiter(Limits(failures=(1 / 60, 3), lockout=60), clock=lambda: now[0])
>>> [limits.failure("10.0.0.7") for _ in range(4)]  # the fourth bad token locks the address out
[0.0, 0.0, 0.0, 60.0]
>>> limits.locked("10.0.0.7"), limits.locked("10.0.0.8")
(60.0, 0.0)
>>> now[0] = 61.0
>>> limits.locked("10.0.0.7")
0.0
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Hashable


@dataclass(frozen=True)
class Limits:
    """``(rate per second, burst)`` of each budget, and the lockout in seconds."""

    per_address: tuple[float, float] = (50.0, 500.0)
    per_token: tuple[float, float] = (10.0, 100.0)
    failures: tuple[float, float] = (20 / 60, 20.0)
    lockout: float = 60.0
    max_keys: int = 100_000


class Buckets:
    """Token buckets by key: ``take(key)`` spends one request.

    >>> b = Buckets(rate=1.0, burst=2)
    >>> [b.take("k", now) for now in (0.0, 0.0, 0.0, 0.5, 1.0)]
    [0.0, 0.0, 1.0, 0.5, 0.0]
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000):
        if rate <= 0 or burst < 1:
            raise ValueError("a bucket needs a rate above 0 and a burst of at least 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._level: dict[Hashable, tuple[float, float]] = {}  # key -> (requests left, when), oldest first

    def take(self, key: Hashable, now: float) -> float:
        """Spend one request of ``key``'s bucket: 0.0 if there was one, else the
        seconds until there is (nothing is spent then)."""
        left, then = self._level.pop(key, (self.burst, now))
        left = min(self.burst, left + (now - then) * self.rate)
        wait = 0.0 if left >= 1 else (1 - left) / self.rate
        self._level[key] = (left - 1 if wait == 0.0 else left, now)  # re-inserted: the most recent
        if len(self._level) > self.max_keys:
            del self._level[next(iter(self._level))]
        return wait


class RateLimiter:
    """The three budgets and the lockouts of :class:`Limits` (see the module's text)."""

    def __init__(self, limits: Limits = Limits(), clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self._addresses = Buckets(*limits.per_address, max_keys=limits.max_keys)
        self._tokens = Buckets(*limits.per_token, max_keys=limits.max_keys)
        self._failures = Buckets(*limits.failures, max_keys=limits.max_keys)
        self._locked: dict[Hashable, float] = {}  # address -> end of its lockout

    def address(self, address: str) -> float:
        """Count a request from ``address``: 0.0 to go on, else seconds to wait."""
        return self._addresses.take(address, self.clock())

    def token(self, annotator_id: str) -> float:
        """Count a request with ``annotator_id``'s valid token: 0.0 to go on, else seconds to wait."""
        return self._tokens.take(annotator_id, self.clock())

    def locked(self, address: str) -> float:
        """Seconds left of ``address``'s lockout (0.0: not locked out)."""
        until = self._locked.get(address)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._locked[address]
            return 0.0
        return left

    def failure(self, address: str) -> float:
        """Count a missing or wrong token from ``address``; the seconds of the
        lockout this failure starts (0.0 while failures are left)."""
        now = self.clock()
        if self._failures.take(address, now) == 0.0:
            return 0.0
        self._locked[address] = now + self.limits.lockout
        if len(self._locked) > self.limits.max_keys:
            del self._locked[next(iter(self._locked))]
        return float(self.limits.lockout)
