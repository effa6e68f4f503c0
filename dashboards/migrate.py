"""Versioned ClickHouse migrations, applied in order at start-up.

A migration is a file ``migrations/NNNN_name.sql``: the number is its version, the
statements end with ``;`` at the end of a line, and lines starting with ``--`` are
comments. Each applied migration is recorded in ``schema_migrations`` (version,
name, applied_at, checksum). Running :func:`migrate` again applies only the new
ones; a migration whose file changed after it was applied is an error (write a new
migration instead). ClickHouse DDL is not transactional, so write statements that
can run twice (``CREATE TABLE IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``): a
migration that failed half way is simply run again.

Run it by hand with ``python -m dashboards.migrate`` (uses ``CLICKHOUSE_DSN``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["MIGRATIONS_DIR", "Migration", "MigrationError", "load_migrations", "migrate", "split_statements"]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

_FILE_NAME = re.compile(r"^(\d+)_(\w+)\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC'),
    checksum   String
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied, or an applied one no longer matches its file."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file text (line endings normalised)."""
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: split after a ``;`` that ends a line.

    >>> split_statements('''-- two tables
    ... CREATE TABLE a (x UInt8) ENGINE = Memory;
    ... CREATE TABLE b
    ... (x UInt8) ENGINE = Memory;
    ... ''')
    ['CREATE TABLE a (x UInt8) ENGINE = Memory', 'CREATE TABLE b\\n(x UInt8) ENGINE = Memory']
    """
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";[ \t]*$", code, flags=re.MULTILINE) if s.strip()]


def load_migrations(directory: Path | str = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in ``directory``, by version.

    >>> [(m.version, m.name) for m in load_migrations()][:1]
    [(1, 'core')]
    """
    migrations: dict[int, Migration] = {}
    for path in sorted(Path(directory).glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: a migration file is named NNNN_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version} is already {migrations[version].name}")
        sql = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        migrations[version] = Migration(version, match.group(2), sql)
    return [migrations[v] for v in sorted(migrations)]


def applied(client) -> dict[int, tuple[str, str]]:
    """Version -> (name, checksum) of the migrations recorded in the database."""
    client.command(_CREATE_LEDGER)
    rows = client.query("SELECT version, name, checksum FROM schema_migrations FINAL").result_rows
    return {version: (name, checksum) for version, name, checksum in rows}


def migrate(client, directory: Path | str = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not applied yet, in order; return their file stems.

    Raises :class:`MigrationError` if an applied migration's file changed, or a
    statement fails (the migrations before it stay applied).
    """
    done = applied(client)
    pending = []
    for m in load_migrations(directory):
        if m.version in done:
            name, checksum = done[m.version]
            if checksum != m.checksum:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name} was applied as {m.version:04d}_{name} "
                    f"with checksum {checksum[:12]}, but its file now has {m.checksum[:12]}: "
                    "never edit an applied migration, add a new one"
                )
        else:
            pending.append(m)
    newly = []
    for m in pending:
        label = f"{m.version:04d}_{m.name}"
        for i, statement in enumerate(m.statements, 1):
            try:
                client.command(statement)
            except Exception as exc:
                raise MigrationError(f"migration {label}, statement {i}: {exc}") from exc
        client.insert(
            "schema_migrations",
            [[m.version, m.name, datetime.now(timezone.utc), m.checksum]],
            column_names=["version", "name", "applied_at", "checksum"],
        )
        log.info("applied migration %s", label)
        newly.append(label)
    return newly


def main(argv: list[str] | None = None) -> int:
    """``python -m dashboards.migrate``: migrate the database of the current settings."""
    from dashboards.connection import connect_settings
    from feedbackloop.settings import Settings

    client = connect_settings(Settings.from_env())
    try:
        newly = migrate(client)
    finally:
        client.close()
    print("applied: " + ", ".join(newly) if newly else "up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
