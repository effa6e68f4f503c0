"""A sequence whose items are made when first asked for, then kept.

A message's path keeps its items as columns and makes an object only for the
few that are read one by one (the preselected): :class:`~streams.selection.scorer.Scored`
(candidates), :class:`~streams.selection.scorer.FeatureRows` (feature dicts) and
:class:`~streams.selection.policy.Decisions` (decisions not selected).

>>> class Squares(LazyItems):
...     __slots__ = ("_made",)
...     def __init__(self, n):
...         self._made = [None] * n
...     def _make(self, i):
...         return {"square": i * i}
>>> s = Squares(4)
>>> s[-1], s[1:3], s[3] is s[-1], list(s)[0]
({'square': 9}, [{'square': 1}, {'square': 4}], True, {'square': 0})
"""

from __future__ import annotations

from collections.abc import Sequence


class LazyItems(Sequence):
    """Items kept in ``self._made`` (None until made); :meth:`_make` makes item ``i`` (``0 <= i < len``)
    the first time it is asked for (by index, slice or iterating), and the same object is given after."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._made)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        item = self._made[i]
        if item is None:
            i = i + len(self) if i < 0 else i
            item = self._made[i] = self._make(i)
        return item

    def _make(self, i: int):
        raise NotImplementedError
