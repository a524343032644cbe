"""Stale calls and reconciliation with Bandwidth's call API (SPEC §11): :mod:`.client` asks the
API, :mod:`.sweep` makes one pass over the stale calls, :mod:`.loop` runs passes in a server.

Importing this package is cheap: the loop (and httpx) are imported only when it is enabled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracker.config import Settings

if TYPE_CHECKING:
    from tracker.reconcile.loop import Reconciler


def start_reconciler(
    storage: Any, writer: Any, settings: Settings, metrics: Any
) -> Reconciler | None:
    """A server's loop, started on the running event loop when ``[reconcile] enabled``."""
    if not settings.reconcile.enabled:
        return None
    from tracker.reconcile.loop import Reconciler

    reconciler = Reconciler(storage, writer, settings.reconcile, metrics.count_reconcile)
    reconciler.start()
    return reconciler


async def stop_reconciler(reconciler: Reconciler | None) -> Reconciler | None:
    """Stop a server's loop (if any) and close its client; returns what replaces it (none)."""
    if reconciler is not None:
        await reconciler.stop()
    return None
