"""``pochi serve``'s entry: one server process, or ``--workers N`` processes on one port."""

from __future__ import annotations

from pochitrain.serve.app import ServeSettings
from pochitrain.serve.server import ServeOptions, serve_one
from pochitrain.serve.workers import serve_workers


def serve(options: ServeOptions, settings: ServeSettings) -> int:
    """Serve until SIGTERM / SIGINT, drain; 0 after a clean stop."""
    if options.workers > 1:
        return serve_workers(options, settings)
    return serve_one(options, settings)
