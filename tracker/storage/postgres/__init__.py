"""The PostgreSQL implementation of the storage interface (several hosts, one log; SPEC §9).

* :mod:`~tracker.storage.postgres.schema` — connections and timeouts, tables, migrations;
* :mod:`~tracker.storage.postgres.writes` — the append transaction under the head row's lock;
* :mod:`~tracker.storage.postgres.queries` — the reads;
* :mod:`~tracker.storage.postgres.replay` — rebuild and check the projection;
* :mod:`~tracker.storage.postgres.connections` — the write connection, the read pool;
* :mod:`~tracker.storage.postgres.listener` — LISTEN/NOTIFY wake-ups for ``wait_for_head``;
* :mod:`~tracker.storage.postgres.errors` — PostgreSQL's errors as ours;
* :mod:`~tracker.storage.postgres.database` — :class:`PostgresStorage`, which owns the
  connections.
"""

from tracker.storage.postgres.database import PostgresSnapshot, PostgresStorage

__all__ = ["PostgresSnapshot", "PostgresStorage"]
