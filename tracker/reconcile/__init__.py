"""Stale calls and reconciliation with Bandwidth's call API (SPEC §11): :mod:`.client` asks the
API, :mod:`.sweep` makes one pass over the stale calls, :mod:`.loop` runs passes in a server."""
