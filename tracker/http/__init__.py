"""The HTTP service, in parts:

* :mod:`~tracker.http.asgi` — sending bytes and errors, the route path (no app state);
* :mod:`~tracker.http.callbacks` — ``/callbacks``, the lean ingest path;
* :mod:`~tracker.http.queries` — the query routes and the read pool;
* :mod:`~tracker.http.stream` — ``/events/stream``, the live log;
* :mod:`~tracker.http.forward` — record-and-forward to the application;
* :mod:`~tracker.http.app` — :class:`TrackerApp`, assembling them with the lifespan.
"""

from tracker.http.app import TrackerApp, create_app

__all__ = ["TrackerApp", "create_app"]
