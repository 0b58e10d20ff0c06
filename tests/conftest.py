"""Collection order and markers for every tier (tests/unit, tests/live, tests/cluster)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that uses the live server is `live`; `make unit` deselects those.
    for item in items:
        if "live_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.live)
    # Tests that kill or delete parts of the session's application run after all others, whatever
    # their file names (a stable sort keeps every other order as collected).
    items.sort(key=lambda item: item.get_closest_marker("disrupts_app") is not None)
