"""Service classes: what a tenant's requests get when the cluster is busy (the catalog's
`edge.service_classes`). Each class names the engine priority of its requests (vLLM's priority
scheduling: lower runs first, and preemption takes the highest number first), its share of a model's
in-flight slots under contention, and how many of its requests may wait for a slot, for how long.
Tenants (the API keys' names) map to a class; every other caller gets the default class.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ANONYMOUS = "anonymous"  # the tenant of every request when API keys are off (services/edge/auth.py)


class ServiceClass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: int = Field(0, ge=0, le=1_000_000, description="vLLM request priority: lower is scheduled first")
    share: float = Field(1.0, gt=0, le=1000, description="weight of its tenants' slots under contention")
    max_queued: int = Field(
        64, ge=0, description="requests of this class that may wait, per model, for a slot at max_in_flight"
    )
    queue_timeout_s: float = Field(30.0, gt=0, le=3600, description="longest wait for a slot; then 429")


# No classes configured: no engine priority, and a model at max_in_flight refuses at once.
UNCLASSED = ServiceClass(max_queued=0)


class ServiceClasses(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: dict[str, ServiceClass] = Field(default_factory=dict)
    tenants: dict[str, str] = Field(default_factory=dict, description="tenant (API key name) -> class")
    default: str | None = Field(None, description="the class of every other tenant (default: the lowest priority)")

    @model_validator(mode="after")
    def _known_classes(self) -> ServiceClasses:
        if (self.tenants or self.default) and not self.classes:
            raise ValueError("tenants and default need `classes`")
        for tenant, name in self.tenants.items():
            if name not in self.classes:
                raise ValueError(f"tenant {tenant!r} names class {name!r}, which `classes` does not define")
        if self.default is not None and self.default not in self.classes:
            raise ValueError(f"default class {self.default!r} is not defined in `classes`")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.classes)

    @property
    def default_name(self) -> str:
        """The default class: as named, else the one of lowest priority (a stranger never outranks)."""
        if self.default is not None:
            return self.default
        return max(self.classes, key=lambda name: self.classes[name].priority) if self.classes else ""

    def class_of(self, tenant: str) -> tuple[str, ServiceClass]:
        if not self.classes:
            return "", UNCLASSED
        name = self.tenants.get(tenant, self.default_name)
        return name, self.classes[name]

    def engine_args(self) -> dict[str, Any]:
        """What every engine needs for its requests' priorities to count."""
        return {"scheduling_policy": "priority"} if self.classes else {}
