"""slmserve's own log lines (the `slmserve.*` loggers) at INFO on the replica's stderr, which Ray
forwards to the driver: `slmserve serve`'s output then shows engines loading, sleeping and waking,
adapters served and HAProxy's maps beside Serve's own lines. Python's default would show only
warnings, and Serve configures only its own `ray.serve` logger."""

from __future__ import annotations

import logging


def show_platform_logs() -> None:
    """Called by each replica's constructor; the first call in a process sets the handler up."""
    logger = logging.getLogger("slmserve")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler, where some host process has one, would print it twice
