"""``tracker reconcile [--dry-run]``: one reconciliation pass from the command line (SPEC §11).

Prints, per stale call, the URL asked, what the API said, and what was recorded (the ``seq`` of
the ``reconciled`` event). ``--dry-run`` lists the stale calls and asks without claiming them or
recording anything. Without ``--dry-run`` each call is claimed for one interval, as a server's
loop does, so a pass here and a server's never ask about a call twice in an interval.
"""

from __future__ import annotations

import argparse
import asyncio

from tracker.cli.common import EXIT_OK, CliError, settings_of, storage_of
from tracker.config import Reconcile
from tracker.reconcile.client import CallApi
from tracker.reconcile.sweep import Finding, Sweep
from tracker.records import Appended, Entry
from tracker.storage import Storage


def _line(f: Finding, dry_run: bool) -> str:
    a = f.answer
    said = a.kind if a.status is None else f"{a.kind} (HTTP {a.status})"
    if f.seq is not None:
        did = f"recorded reconciled seq {f.seq}"
    elif a.kind == "ended" and dry_run:
        did = "would record a reconciled event (dry run)"
    else:
        did = "recorded nothing"
    return f"{f.call_id}: {f.url or '-'}: {said}: {a.detail}; {did}"


async def _pass(storage: Storage, settings: Reconcile, dry_run: bool) -> list[Finding]:
    api = CallApi(
        settings.username, settings.password, max_per_second=settings.max_requests_per_second
    )

    async def record(entry: Entry) -> Appended:
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: storage.append([entry])[0]
        )

    sweep = Sweep(storage, settings, api, record=None if dry_run else record)
    try:
        return await sweep.run()
    finally:
        await api.close()


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if not settings.reconcile.username:
        raise CliError(
            "reconcile needs reconcile.username and reconcile.password (a Bandwidth API user with"
            " read access to calls): set them in the config or TRACKER_RECONCILE_USERNAME/PASSWORD"
        )
    storage = storage_of(settings)
    try:
        found = asyncio.run(_pass(storage, settings.reconcile, args.dry_run))
    finally:
        storage.close()
    for f in found:
        print(_line(f, args.dry_run))
    recorded = sum(1 for f in found if f.seq is not None)
    ended = sum(1 for f in found if f.answer.kind == "ended")
    tail = f"{ended} ended (dry run: nothing recorded)" if args.dry_run else f"{recorded} recorded"
    print(f"reconcile: {len(found)} stale calls asked, {tail}")
    return EXIT_OK
