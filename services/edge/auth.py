"""API keys: Bearer tokens from a file or the environment, kept only as SHA-256 digests in memory
and compared in constant time. A key may name a tenant ("tenant:key"); rate limits are per tenant.

Sources (merged): SLMSERVE_API_KEYS="team-a:sk-...,sk-..." and SLMSERVE_API_KEYS_FILE (one
"tenant:key" or "key" per line, '#' comments). No key configured means auth is off.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from services.core.service_classes import ANONYMOUS


class KeyRing:
    def __init__(self, entries: list[str]) -> None:
        self._digests: list[tuple[bytes, str]] = []
        for index, entry in enumerate(entries):
            tenant, sep, key = entry.strip().rpartition(":")
            if not sep:
                tenant, key = f"key-{index + 1}", entry.strip()
            if not key:
                raise ValueError(f"API key entry {index + 1} is empty")
            self._digests.append((hashlib.sha256(key.encode()).digest(), tenant or f"key-{index + 1}"))

    @classmethod
    def load(cls, inline: str = "", file: Path | None = None) -> KeyRing:
        entries = [item for item in inline.split(",") if item.strip()]
        if file is not None:
            entries += [
                line.strip()
                for line in file.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant of a valid `Authorization: Bearer <key>` header, else None. Every stored
        digest is compared, so the time taken does not depend on which key (if any) matched."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for stored, tenant in self._digests:
            if hmac.compare_digest(stored, digest) and found is None:
                found = tenant
        return found
