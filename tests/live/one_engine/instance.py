"""The instance the tests of this package share: `slmserve serve` of the embedded model on one engine
that runs one sequence at a time, with two tenants of two service classes and request tracing to a
receiver of the tests (issues 19 and 30), plus two copies of the model that scale to zero (issue 29):
one start serves the service-class, tracing and scale-to-zero tests (conftest.py). Models at zero
cost nothing until asked, so the first tests see one engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testkit.idle_models import at_zero

MODEL = "smollm2-135m-instruct"
KEYS = {"app": "sk-app-interactive", "nightly": "sk-nightly-batch"}
IN_FLIGHT = 6  # interactive is guaranteed 4, batch 1; while interactive is active batch may use 2
HELD, IMPATIENT = "held-smollm2", "impatient-smollm2"
HOLD_S = 240  # far above a replica's start on a busy 2-core machine
TO_ZERO_S = 5  # idle time before the last replica goes


def with_classes(catalog: dict[str, Any]) -> None:
    catalog["edge"]["service_classes"] = {
        "classes": {
            "interactive": {"priority": 0, "share": 3, "max_queued": 4, "queue_timeout_s": 120},
            "batch": {"priority": 10, "share": 1, "max_queued": 4, "queue_timeout_s": 120},
        },
        "tenants": {"app": "interactive", "nightly": "batch"},
    }
    (model,) = catalog["models"]
    model["max_in_flight"] = IN_FLIGHT
    model["engine_args"]["max_num_seqs"] = 1  # one sequence at a time: the rest wait in vLLM's queue
    # One core each, and half a Ray CPU: a replica of a model at zero finds room beside it.
    model["env"] = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    model["engine_args"]["kv_cache_memory_bytes"] = 134217728
    model["deployment"]["ray_actor_options"] = {"num_cpus": 0.5}


def with_models_at_zero(catalog: dict[str, Any]) -> None:
    """Two copies of the model at zero replicas: one holds its requests through a replica's start, the
    other only 2 s (then 503). Neither has the original's in-flight bound or one-sequence engine."""
    (model,) = catalog["models"]
    for name, hold_s in ((HELD, HOLD_S), (IMPATIENT, 2)):
        copy = at_zero(model, name, hold_s, TO_ZERO_S)
        copy.pop("max_in_flight")
        copy["engine_args"] = {**model["engine_args"], "max_num_seqs": 8}
        catalog["models"].append(copy)


def the_instance(traces_endpoint: str) -> Callable[[dict[str, Any]], None]:
    def change(catalog: dict[str, Any]) -> None:
        catalog["tracing"] = {"otlp_traces_endpoint": traces_endpoint}
        with_classes(catalog)
        with_models_at_zero(catalog)

    return change
