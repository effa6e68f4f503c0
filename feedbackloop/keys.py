"""Model keys: who signs model versions, who checks them, and ``feedbackloop keygen``.

Model versions are signed with Ed25519 (see :mod:`streams.learning.snapshot`). A key is
the base64 of its raw 32 bytes. Workers hold the private key
(``FEEDBACKLOOP_MODEL_SIGNING_KEY``: any of them may own the learner); the
labeling service holds only the public key (``FEEDBACKLOOP_MODEL_VERIFY_KEY``,
or derived from the private one when that is set). There is no default: a
process without its key refuses to start (:class:`MissingKey`).

A key pair is written as two ``KEY=value`` lines, a file usable as
``FEEDBACKLOOP_CONFIG`` or as Compose's ``.env``, readable by its owner only.
The local stack, the demo and the tests keep one such pair per state
directory (:func:`local`).

>>> signing, verify = generate()
>>> settings = Settings(model_signing_key=signing)
>>> verify_text(signing) == verify
True
>>> signing_key(settings).public_key() == verify_key(Settings(model_verify_key=verify))
True
>>> verify_key(Settings())
Traceback (most recent call last):
...
feedbackloop.keys.MissingKey: no model verify key: set FEEDBACKLOOP_MODEL_VERIFY_KEY (the public key printed by `feedbackloop keygen` with the workers' FEEDBACKLOOP_MODEL_SIGNING_KEY)
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from feedbackloop.settings import Settings, env_name, raw_key, read_env_file

SIGNING, VERIFY = env_name("model_signing_key"), env_name("model_verify_key")
#: The key pair of a state directory (the local stack, the demo, the tests).
LOCAL_FILE = "model-keys.env"
_RAW = {"encoding": serialization.Encoding.Raw}


class MissingKey(ValueError):
    """A process started without the model key it needs."""


def _text(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def generate() -> tuple[str, str]:
    """A new key pair: (signing key, verify key), each as base64."""
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(format=serialization.PrivateFormat.Raw,
                                encryption_algorithm=serialization.NoEncryption(), **_RAW)
    return _text(raw), verify_text(_text(raw))


def verify_text(signing: str) -> str:
    """The verify key (base64) of a signing key (base64)."""
    private = Ed25519PrivateKey.from_private_bytes(raw_key(signing, SIGNING))
    return _text(private.public_key().public_bytes(format=serialization.PublicFormat.Raw, **_RAW))


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The learner's private key; :class:`MissingKey` without one, ``ValueError``
    if ``model_verify_key`` is set too and is not its public half."""
    if not settings.model_signing_key:
        raise MissingKey(f"no model signing key: set {SIGNING} (a worker signs the model versions it "
                         f"publishes); `feedbackloop keygen` prints a new key pair")
    if settings.model_verify_key and verify_text(settings.model_signing_key) != settings.model_verify_key.strip():
        raise ValueError(f"{VERIFY} is not the public key of {SIGNING}; set both from one `feedbackloop keygen`")
    return Ed25519PrivateKey.from_private_bytes(raw_key(settings.model_signing_key, SIGNING))


def verify_key(settings: Settings) -> Ed25519PublicKey:
    """The public key model versions are checked with: ``model_verify_key``, or
    the public half of ``model_signing_key``; :class:`MissingKey` without either."""
    if settings.model_signing_key:
        return signing_key(settings).public_key()
    if not settings.model_verify_key:
        raise MissingKey(f"no model verify key: set {VERIFY} (the public key printed by `feedbackloop keygen` "
                         f"with the workers' {SIGNING})")
    return Ed25519PublicKey.from_public_bytes(raw_key(settings.model_verify_key, VERIFY))


def write(path: str | Path, signing: str, verify: str) -> Path:
    """Write a key pair to a new file only its owner can read (mode 0600), whole
    or not at all; ``FileExistsError`` if ``path`` exists."""
    path = Path(path)
    text = (f"# model keys: workers need both lines, the labeling service only the second\n"
            f"{SIGNING}={signing}\n{VERIFY}={verify}\n")
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp.write(text)  # NamedTemporaryFile creates the file with mode 0600
        tmp.flush()
        os.link(tmp.name, path)  # atomic, and never replaces an existing file
    return path


def local(settings: Settings, signing: bool = True) -> Settings:
    """``settings`` with the key pair of its state directory, created on first use,
    unless a key is set already. With ``signing=False`` only the verify key is
    filled in (the labeling service needs no more).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as state:
    ...     first = local(Settings(state_dir=state))
    ...     again = local(Settings(state_dir=state), signing=False)
    ...     mode = oct((Path(state) / LOCAL_FILE).stat().st_mode & 0o777)
    >>> again.model_verify_key == first.model_verify_key != "", again.model_signing_key, mode
    (True, '', '0o600')
    """
    if settings.model_signing_key or settings.model_verify_key:
        return settings
    path = Path(settings.state_dir).resolve() / LOCAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(path, *generate())
    except FileExistsError:
        pass
    values = read_env_file(path)
    return settings.replace(model_signing_key=values[SIGNING] if signing else "", model_verify_key=values[VERIFY])


# -- feedbackloop keygen ---------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``keygen`` command to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "keygen", help="make a new model signing key pair",
        description=f"Prints a new Ed25519 key pair as {SIGNING}=... and {VERIFY}=... lines (or writes "
                    f"them to a new file, mode 0600). Give workers both, the labeling service only "
                    f"{VERIFY}. The file works as FEEDBACKLOOP_CONFIG or as Compose's .env.")
    p.add_argument("--out", metavar="PATH", help="write the pair to this new file instead of printing it")
    p.set_defaults(func=run, uses_settings=False)
    return p


def run(args, settings: Settings | None = None, out=None) -> int:
    """``feedbackloop keygen``: needs no settings (a broken key in them must not stop you making a new one)."""
    out = out or sys.stdout
    signing, verify = generate()
    if args.out:
        try:
            write(args.out, signing, verify)
        except FileExistsError:
            raise ValueError(f"{args.out} exists; keygen never overwrites a key") from None
        print(f"wrote {args.out} (mode 0600); its {VERIFY} is {verify}", file=out)
    else:
        print(f"{SIGNING}={signing}\n{VERIFY}={verify}", file=out)
    return 0
