"""The OpenAI streaming wire format, in one place: server-sent events whose `data:` lines carry
JSON chunks, an in-band error event for a stream that has already started, and `data: [DONE]` last.

vLLM's serving layer writes the chunks; slmserve reads two things from them (the usage-only chunk
that vLLM sends last when asked, and each choice's finish reason) and writes only the error event
and [DONE] itself.
"""

from __future__ import annotations

import json
import re
from typing import Any

from services.core.errors import error_body

DONE = "data: [DONE]\n\n"  # the stream's last frame; clients stop reading at it
DATA = "data: "
MEDIA_TYPE = "text/event-stream"
_FINISH_REASON = re.compile(r'"finish_reason":"(\w+)"')
_NO_CHOICES = '"choices":[]'


def event(payload: dict[str, Any]) -> str:
    return f"{DATA}{json.dumps(payload)}\n\n"


def named_event(name: str, data_json: str) -> str:
    """An event with a type line, as the Responses API streams them (no [DONE] follows)."""
    return f"event: {name}\n{DATA}{data_json}\n\n"


def error_event(status: int, message: str, *, code: str | None = None) -> str:
    """An error delivered inside an already-started stream, as OpenAI's SSE streams carry it."""
    return event(error_body(status, message, code=code))


def is_done(frame: str) -> bool:
    return frame.startswith(DONE)


def usage_of(frame: str) -> dict[str, Any] | None:
    """The usage of vLLM's usage-only chunk (no choices), else None; other frames are not parsed."""
    if _NO_CHOICES not in frame or '"usage"' not in frame:
        return None
    usage: dict[str, Any] | None = json.loads(frame.removeprefix(DATA))["usage"]
    return usage


def with_fingerprint(frame: str, fingerprint: str) -> str:
    """One chunk's frame with `system_fingerprint` set (vLLM stamps it on a stream's finishing chunks)."""
    if '"system_fingerprint"' in frame:
        return frame
    body = frame.removeprefix(DATA).rstrip()
    return f"{DATA}{body[:-1]},{json.dumps('system_fingerprint')}:{json.dumps(fingerprint)}}}\n\n"


def finish_reason_of(frame: str) -> str | None:
    """The last finish reason a frame carries (a coalesced frame may hold several chunks)."""
    if '"finish_reason":"' not in frame:
        return None
    reason: str = _FINISH_REASON.findall(frame)[-1]
    return reason
