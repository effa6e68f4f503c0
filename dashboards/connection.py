"""Connect to ClickHouse: the embedded engine (chDB) or a real server, from one DSN.

- ``chdb:///abs/path`` (or ``chdb://relative/path``): the ClickHouse engine in this
  process, data in that directory (created if missing). One process owns a data
  directory at a time, and a process can host one engine path at a time: close
  every client of a path before opening another. ``chdb://memory`` keeps
  everything in memory.
- ``http://host:8123/db`` or ``https://...``: a ClickHouse server; the database is
  the DSN path (it must exist), credentials come from the arguments (or the DSN).

>>> parse_chdb_dsn("chdb:///var/lib/feedbackloop/clickhouse")
'/var/lib/feedbackloop/clickhouse'
>>> parse_chdb_dsn("chdb://memory") is None
True
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

__all__ = ["connect", "connect_settings", "parse_chdb_dsn"]


def parse_chdb_dsn(dsn: str) -> str | None:
    """The data directory of a ``chdb://`` DSN as an absolute path, ``None`` for memory.

    Everything after ``chdb://`` is a file system path, so a relative path is
    relative to the working directory (and not read as host + database).

    >>> parse_chdb_dsn("chdb://:memory:") is None
    True
    >>> parse_chdb_dsn("chdb://state/ch") == str(Path("state/ch").resolve())
    True
    """
    if not dsn.startswith("chdb://"):
        raise ValueError(f"not a chdb:// DSN: {dsn!r}")
    location = unquote(dsn[len("chdb://"):].split("?", 1)[0])
    if location in ("", "memory", ":memory:"):
        return None
    return str(Path(location).expanduser().resolve())


def connect(dsn: str, username: str = "", password: str = "") -> Client:
    """A clickhouse-connect client for a ``chdb://`` or ``http(s)://`` DSN.

    Credentials apply to servers only (the embedded engine has none). The caller
    owns the client: ``client.close()`` releases it (and, for chdb, lets the
    process open another data directory).
    """
    if dsn.startswith("chdb:"):
        path = parse_chdb_dsn(dsn)
        if path is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
        try:
            return clickhouse_connect.get_client(interface="chdb", path=path)
        except Exception as exc:
            raise ConnectionError(
                f"cannot open the embedded ClickHouse engine at {path or ':memory:'}: {exc} "
                "(only one process may own a data directory, and one process hosts one "
                "data directory at a time)"
            ) from exc
    scheme = urlparse(dsn).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported ClickHouse DSN {_redact(dsn)!r}: use chdb://PATH or http(s)://HOST:PORT/DB")
    try:
        return clickhouse_connect.get_client(dsn=dsn, interface=scheme, username=username or None, password=password)
    except Exception as exc:
        raise ConnectionError(f"cannot connect to ClickHouse at {_redact(dsn)}: {exc}") from exc


def connect_settings(settings) -> Client:
    """:func:`connect` with ``settings.clickhouse_dsn``, ``clickhouse_username`` and ``clickhouse_password``."""
    return connect(settings.clickhouse_dsn, settings.clickhouse_username, settings.clickhouse_password)


def _redact(dsn: str) -> str:
    """The DSN without a password, safe to log.

    >>> _redact("https://bob:s3cret@ch.example:8443/prod")
    'https://bob:***@ch.example:8443/prod'
    """
    parsed = urlparse(dsn)
    if parsed.password is None:
        return dsn
    netloc = parsed.netloc.replace(":" + parsed.password + "@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()
