"""Responses API ids that name the engine replica holding them.

vLLM keeps a stored response (and the conversation behind it) in the memory of the engine process
that made it, so `previous_response_id` and `GET /v1/responses/{id}` work only on that replica. The
engine makes each response's id carry its replica's id; the replica choice reads it back and sends
the follow-up there (services/routing/policies.py). The rest of the id is random: ids are not
guessable, and a replica that is gone leaves its ids to a clear 404 from whichever replica answers.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

PREFIX = "resp_"
_ID = re.compile(rf"{PREFIX}([a-z0-9]{{1,32}})-[0-9a-f]{{32}}")


def new_response_id(replica: str) -> str:
    """A fresh id for a response made on `replica` (Serve's replica unique id)."""
    return f"{PREFIX}{replica}-{uuid.uuid4().hex}"


def owner_of(response_id: object) -> str | None:
    """The replica a response id names, or None (not an id this platform made)."""
    match = _ID.fullmatch(response_id) if isinstance(response_id, str) else None
    return match.group(1) if match else None


def referenced_response(body: dict[str, Any] | None) -> str | None:
    """The stored response a request needs: the parent of a follow-up, or the one asked for by id."""
    if body is None:
        return None
    for key in ("previous_response_id", "response_id"):
        if isinstance(body.get(key), str):
            value: str = body[key]
            return value
    return None
