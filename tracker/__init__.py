"""tracker: event-sourced call-state tracker for Bandwidth voice callbacks."""

__version__ = "0.1.0"
