"""The entry point for running or embedding the service: ``create_app(settings)`` returns the
ASGI application (its parts are in :mod:`tracker.http`)."""

from tracker.http.app import TrackerApp, create_app

__all__ = ["TrackerApp", "create_app"]
