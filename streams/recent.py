"""A bounded memory: the most recent keys, the oldest forgotten first.

The stream remembers what it has seen (scored items, decided events, tasks,
labels) to join and de-duplicate, and must not grow without end. A
:class:`Recent` is a dict that keeps only the ``limit`` keys set most recently.

>>> seen = Recent(limit=2)
>>> seen["a"], seen["b"], seen["a"], seen["c"] = 1, 2, 3, 4
>>> list(seen.items())
[('a', 3), ('c', 4)]
"""

from __future__ import annotations

from collections import OrderedDict


class Recent(OrderedDict):
    """A dict of at most ``limit`` keys; setting a key makes it the newest."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.limit:
            self.popitem(last=False)

    def __reduce__(self):
        return type(self), (self.limit,), None, None, iter(self.items())
