"""Session ids, bounded: a client's session header picks a replica (policy `session`), and a hostile
one must cost nothing more than a short one."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

MAX_SESSION_ID_CHARS = 256  # longer ids are cut


def bounded(session_id: str | None) -> str | None:
    return session_id[:MAX_SESSION_ID_CHARS] if session_id else None


def with_session(handle: DeploymentHandle, session_id: str | None) -> DeploymentHandle:
    """The handle whose request router sees this session id (as `PendingRequest.metadata.session_id`)."""
    session = bounded(session_id)
    return handle.options(session_id=session) if session else handle
