"""An item's model input: its numeric features, plus word counts when it has text.

Every model of the loop (the scorer's shadow model, the policy's novelty
sketch, the learner) reads items through :func:`featurize`, so they all see an
item the same way. Words become features named ``w:<word>``.

>>> featurize({"len": 2.0}, "Good good dog")
{'len': 2.0, 'w:good': 2.0, 'w:dog': 1.0}
>>> x = {"len": 2.0}
>>> featurize(x) is x  # no text: the features as they are, nothing computed
True
"""

from __future__ import annotations

import re

__all__ = ["featurize"]

_TOKEN = re.compile(r"\w+")


def featurize(features: dict[str, float], text: str | None = None) -> dict[str, float]:
    """Model input: ``features``, plus the count of each word of ``text`` as ``w:<word>``."""
    if not text:
        return features
    x = dict(features)
    for token in _TOKEN.findall(text.lower()):
        key = "w:" + token
        x[key] = x.get(key, 0.0) + 1.0
    return x
