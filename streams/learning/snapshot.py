"""The model snapshot on the ``models`` topic: signed with Ed25519, read by a restricted unpickler.

A snapshot is a pickle (River models have no other complete serialisation),
and unpickling runs code. So two locks, both checked by :func:`open_snapshot`:

1. **Signature.** Only the learner holds the private key; every reader has
   the public key. The signed message binds the model name and version to
   the snapshot bytes (a signed snapshot cannot be replayed under another
   version). ``ModelVersion.signature`` is ``"ed25519:<128 hex digits>"``;
   anything else is refused, before a single byte is unpickled.
2. **Restricted unpickler.** Even a correctly signed snapshot may name only
   the classes River models and the learner's state are made of (:data:`ALLOWED`):
   River classes, a few River distance functions, NumPy array reconstruction,
   ``collections`` containers, plain builtin types and ``random.Random``.
   ``os.system``, ``builtins.eval`` and the like raise :class:`SnapshotRejected`.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.generate()
>>> data = dumps({"model": None, "classes": ["no", "yes"]})
>>> record = {"model_name": "m", "version": 1, "snapshot": data, "signature": sign("m", 1, data, key)}
>>> record["signature"][:8], len(record["signature"])
('ed25519:', 136)
>>> open_snapshot(record, key.public_key())
{'model': None, 'classes': ['no', 'yes']}
>>> open_snapshot(dict(record, version=2), key.public_key())
Traceback (most recent call last):
...
streams.learning.snapshot.SnapshotRejected: model 'm' version 2: the signature does not verify with the model verify key
>>> loads(b"\\x80\\x04\\x8c\\x02os\\x8c\\x06system\\x93.")
Traceback (most recent call last):
...
streams.learning.snapshot.SnapshotRejected: the snapshot names os.system, which a model snapshot may not use
"""

from __future__ import annotations

import io
import json
import pickle
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: Protocol 5: no ``copyreg`` or ``_codecs`` helpers needed to rebuild objects.
PROTOCOL = 5
PREFIX = "ed25519:"
_SIGNATURE = re.compile(r"ed25519:[0-9a-f]{128}")

#: What a snapshot may name besides River's classes, module -> names.
ALLOWED: dict[str, frozenset[str]] = {
    "river._river_rust.vectordict": frozenset({"euclidean_distance_tuple"}),
    "river.utils.math": frozenset({"minkowski_distance", "euclidean_distance", "manhattan_distance"}),
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "collections": frozenset({"OrderedDict", "defaultdict", "deque", "Counter"}),
    "functools": frozenset({"partial"}),
    "random": frozenset({"Random"}),
    "builtins": frozenset({"bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int",
                           "list", "range", "set", "slice", "str", "tuple"}),
}
#: Any class defined in a ``river.*`` module may be named too, except in River's modules
#: that read or write files or the network.
RIVER_IO = ("river.datasets", "river.stream", "river.api")


class SnapshotRejected(Exception):
    """A model snapshot that is not signed by the learner's key, or names what a model may not."""


def dumps(state: dict) -> bytes:
    """The snapshot bytes of ``state`` (a pickle)."""
    return pickle.dumps(state, protocol=PROTOCOL)


def _river_class_name(module: str, name: str) -> bool:
    """``module.name`` may be a River class (checked once found). Dotted names
    (attributes of attributes, which could reach any module) never are."""
    return (module.startswith("river.") and not module.startswith(RIVER_IO)
            and "." not in name and not name.startswith("_"))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        listed = name in ALLOWED.get(module, ())
        if not listed and not _river_class_name(module, name):
            raise SnapshotRejected(f"the snapshot names {module}.{name}, which a model snapshot may not use")
        try:
            found = super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            raise SnapshotRejected(f"the snapshot names {module}.{name}, which does not exist: {exc}") from None
        if not listed and not (isinstance(found, type) and found.__module__.startswith("river.")):
            raise SnapshotRejected(f"the snapshot names {module}.{name}, which is not a River class")
        return found


def loads(data: bytes):
    """Unpickle ``data``, allowing only the names in :data:`ALLOWED`."""
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except SnapshotRejected:
        raise
    except Exception as exc:  # a truncated or malformed pickle
        raise SnapshotRejected(f"the snapshot does not unpickle: {type(exc).__name__}: {exc}") from None


def message(name: str, version: int, snapshot: bytes) -> bytes:
    """The signed bytes: model name and version, then the snapshot.

    >>> message("m", 3, b"...")
    b'["m", 3]\\n...'
    """
    return json.dumps([name, version]).encode() + b"\n" + snapshot


def sign(name: str, version: int, snapshot: bytes, key: Ed25519PrivateKey) -> str:
    """The ``ModelVersion.signature`` of a snapshot: ``"ed25519:"`` and the signature in hex."""
    return PREFIX + key.sign(message(name, version, snapshot)).hex()


def verify(record: dict, key: Ed25519PublicKey | Ed25519PrivateKey) -> None:
    """Raise :class:`SnapshotRejected` unless ``record`` is signed by the private half of ``key``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    signature = record.get("signature") or ""
    if not _SIGNATURE.fullmatch(signature):
        shown = signature[:20] + "..." if len(signature) > 20 else signature
        raise _rejected(record, f"the signature {shown!r} is not 'ed25519:' and 128 hex digits")
    try:
        public.verify(bytes.fromhex(signature[len(PREFIX):]),
                      message(record["model_name"], record["version"], record["snapshot"]))
    except InvalidSignature:
        raise _rejected(record, "the signature does not verify with the model verify key") from None


def open_snapshot(record: dict, key: Ed25519PublicKey | Ed25519PrivateKey) -> dict:
    """The state a ``ModelVersion`` record carries: its signature checked first, then restricted unpickling."""
    verify(record, key)
    try:
        state = loads(record["snapshot"])
    except SnapshotRejected as exc:
        raise _rejected(record, str(exc)) from None
    if not isinstance(state, dict) or "model" not in state or "classes" not in state:
        raise _rejected(record, "the snapshot is not a model state")
    return state


def _rejected(record: dict, reason: str) -> SnapshotRejected:
    return SnapshotRejected(f"model {record.get('model_name')!r} version {record.get('version')}: {reason}")
