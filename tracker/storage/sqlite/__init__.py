"""The SQLite implementation of the storage interface (the embedded default).

* :mod:`~tracker.storage.sqlite.schema` — connections and pragmas, tables, migrations;
* :mod:`~tracker.storage.sqlite.writes` — the append transaction (log, dedupe, projection);
* :mod:`~tracker.storage.sqlite.queries` — the reads;
* :mod:`~tracker.storage.sqlite.replay` — rebuild and check the projection;
* :mod:`~tracker.storage.sqlite.backup` — the online copy;
* :mod:`~tracker.storage.sqlite.errors` — SQLite's errors as ours;
* :mod:`~tracker.storage.sqlite.database` — :class:`SqliteStorage`, which owns the connections.
"""

from tracker.storage.sqlite.database import SqliteSnapshot, SqliteStorage

__all__ = ["SqliteSnapshot", "SqliteStorage"]
