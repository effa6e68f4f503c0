"""A bounded memory: the most recent keys, the oldest forgotten first, in O(1).

The stream remembers what it has seen (scored items, decided events, tasks,
labels; the rows the ClickHouse sink wrote) to join and de-duplicate, and must
not grow without end. A :class:`Recent` is a dict that keeps only the
``limit`` keys set most recently:

>>> memory = Recent(limit=2)
>>> memory["a"], memory["b"], memory["a"], memory["c"] = 1, 2, 3, 4
>>> list(memory.items())
[('a', 3), ('c', 4)]

Used as a set of keys, :meth:`Recent.add` records a key and says whether it
is new; a key seen again is not made newer:

>>> seen = Recent(limit=2)
>>> [seen.add(k) for k in ["a", "b", "a", "c", "a"]]
[True, True, False, True, True]
"""

from __future__ import annotations

from collections import OrderedDict


class Recent(OrderedDict):
    """A dict of at most ``limit`` keys; setting a key makes it the newest."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.limit:
            self.popitem(last=False)

    def set_many(self, pairs) -> None:
        """``self[key] = value`` of each ``(key, value)`` in order (a message's at once).

        >>> memory = Recent(limit=2)
        >>> memory.set_many([("a", 1), ("b", 2), ("a", 3), ("c", 4)])
        >>> list(memory.items())
        [('a', 3), ('c', 4)]
        """
        setitem, newest = OrderedDict.__setitem__, self.move_to_end
        for key, value in pairs:
            setitem(self, key, value)
            newest(key)
        while len(self) > self.limit:
            self.popitem(last=False)

    def add(self, key) -> bool:
        """Remember ``key``; False if it is remembered already."""
        if key in self:
            return False
        OrderedDict.__setitem__(self, key, None)  # a new key is the newest already
        if len(self) > self.limit:
            self.popitem(last=False)
        return True

    def __reduce__(self):
        return type(self), (self.limit,), None, None, iter(self.items())
