"""NIM 1.x edge metric names, types and buckets (one place), plus slmserve's own edge metrics."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.core.errors import Code

MODEL = ("model_name",)
# Per-request series: model_name is what the client asked for (a LoRA adapter's own name, as NIM labels
# adapter requests), base_model the catalog model serving it (the same for base-model requests).
REQUEST = ("model_name", "base_model")
TENANT = ("tenant", "model_name")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5)
E2E_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 40, 50, 60)
TOKEN_BUCKETS = (*(float(m * 10**e) for e in range(5) for m in (1, 2, 5)), 100000.0)  # 1, 2, 5 ... 50000, 100000
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
OVERHEAD_PHASES = ("ingress", "edge", "relay")
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
HOLD_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TENANT_OUTCOMES = ("success", "failure", "rejected")
VISION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# vLLM's own series the dashboard reads, passed through by the hub with a `replica` label.
VLLM_SERIES_ON_DASHBOARD = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
    }
)
# Rejections a healthy system may simply not have had yet; their series start at 0 so that dashboards
# and alert rules see 0 instead of no data (other reasons, such as image errors, appear when they occur).
EXPECTED_REJECTIONS = (
    Code.QUEUE_FULL,
    Code.QUEUE_TIMEOUT,
    Code.RATE_LIMITED_REQUESTS,
    Code.RATE_LIMITED_TOKENS,
    Code.MODEL_NOT_READY,
    Code.TIMEOUT,
    Code.REPLICA_UNAVAILABLE,
)


class EdgeMetrics:
    """The counters and histograms the edge measures, kept in one registry on the hub."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens processed", REQUEST, registry=registry)
        self.generation_tokens = Counter("generation_tokens", "Generated tokens", REQUEST, registry=registry)
        self.success = Counter("request_success", "Requests that finished successfully", REQUEST, registry=registry)
        self.failure = Counter("request_failure", "Requests that failed", REQUEST, registry=registry)
        self.finish = Counter(
            "request_finish", "Finished requests by finish reason", (*REQUEST, "finished_reason"), registry=registry
        )
        self.ttft = Histogram(
            "time_to_first_token_seconds",
            "Time from arrival at the router to the first token",
            REQUEST,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "time_per_output_token_seconds",
            "Time per output token after the first",
            REQUEST,
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "e2e_request_latency_seconds",
            "Time from arrival at the router to the last byte",
            REQUEST,
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.request_prompt_tokens = Histogram(
            "request_prompt_tokens", "Prompt tokens per request", REQUEST, buckets=TOKEN_BUCKETS, registry=registry
        )
        self.request_generation_tokens = Histogram(
            "request_generation_tokens",
            "Generated tokens per request",
            REQUEST,
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.vision_encoder = Histogram(
            "vision_encoder_latency_seconds",
            "Image decoding and preparation time per vision request",
            REQUEST,
            buckets=VISION_BUCKETS,
            registry=registry,
        )
        # slmserve's own, for what NIM lacks
        self.http_requests = Counter(
            "slmserve_http_requests",
            "HTTP requests by route and status code",
            ("route", "status_code"),
            registry=registry,
        )
        self.rejected = Counter(
            "slmserve_rejected_requests",
            "Requests refused before reaching an engine",
            (*REQUEST, "reason"),
            registry=registry,
        )
        self.routing = Counter(
            "slmserve_routing_decisions",
            "Engine replica choices by policy and reason "
            "(response_owner, prefix_hit, adapter_hit, session, load_guard, fallback, least_loaded, single_replica)",
            (*MODEL, "policy", "reason"),
            registry=registry,
        )
        self.decision_time = Histogram(
            "slmserve_routing_decision_seconds",
            "Time the ReplicaPicker takes to choose an engine replica for HAProxy, per request (direct "
            "mode, models with a replica choice): the policy and Ray's pick, not HAProxy's call to it",
            MODEL,
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "slmserve_platform_overhead_seconds",
            "The platform's own time per request, by phase: ingress (HAProxy's receipt to the edge's "
            "handler), edge (the handler to the engine call: parsing, checks, admission, a wait for a slot "
            "excluded), relay (handing a stream's chunks to the client, including any wait on a slow reader)",
            (*MODEL, "phase"),
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        # Metering per tenant (an API key's name, or anonymous: bounded by the keys configured).
        self.tenant_prompt_tokens = Counter(
            "slmserve_tenant_prompt_tokens",
            "Prompt tokens per tenant, as the engine reported them",
            TENANT,
            registry=registry,
        )
        self.tenant_generation_tokens = Counter(
            "slmserve_tenant_generation_tokens",
            "Generated tokens per tenant, as the engine reported them (the answers' `usage`)",
            TENANT,
            registry=registry,
        )
        self.tenant_requests = Counter(
            "slmserve_tenant_requests",
            "Model requests per tenant by outcome: success, failure (reached the engine), rejected (refused before)",
            (*TENANT, "outcome"),
            registry=registry,
        )
        self.tenant_queue = Histogram(
            "slmserve_tenant_queue_seconds",
            "Time a request waited for an in-flight slot of its model (models with max_in_flight)",
            (*TENANT, "service_class"),
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self.held = Histogram(
            "slmserve_request_hold_seconds",
            "Time a request to a model with no running replica (scaled to zero, or starting) was held until "
            "its engine answered: the replica's start plus its first token",
            REQUEST,
            buckets=HOLD_BUCKETS,
            registry=registry,
        )
        self.wake = Histogram(
            "slmserve_engine_wake_seconds",
            "Time a sleeping engine took to wake for a request (vLLM's sleep mode, idle.sleep_after_s)",
            MODEL,
            buckets=HOLD_BUCKETS,
            registry=registry,
        )
        self.placed = Counter(
            "slmserve_platform_placed_requests",
            "Model requests HAProxy could not place by `model` (none, unknown, malformed, beyond its "
            "buffer), answered by the platform application; model_name none when none resolved",
            MODEL,
            registry=registry,
        )

    def initialize(self, model_names: list[str], tenants: Sequence[str] = ()) -> None:
        """Create the per-model and per-tenant series at 0 (Prometheus's advice: initialize the series
        you know of)."""
        for tenant in tenants:
            for model in model_names:
                self.tenant_prompt_tokens.labels(tenant, model)
                self.tenant_generation_tokens.labels(tenant, model)
                for outcome in TENANT_OUTCOMES:
                    self.tenant_requests.labels(tenant, model, outcome)
        for model in model_names:
            for counter in (self.success, self.failure, self.prompt_tokens, self.generation_tokens):
                counter.labels(model, model)
            for reason in EXPECTED_REJECTIONS:
                self.rejected.labels(model, model, reason)
            self.held.labels(model, model)  # the dashboard's idle-model panel shows 0, not "No data"
            self.wake.labels(model)
