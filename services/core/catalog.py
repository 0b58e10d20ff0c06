"""The model catalog: the one validated description of what is served and how.

The same file drives `slmserve serve`, the Ray Serve application and the Helm chart's
serveConfigV2. Each entry names a model, where its weights come from, the engine arguments
handed to vLLM untouched, and the Ray Serve deployment options of its engine replicas.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.core.service_classes import ANONYMOUS, ServiceClasses
from services.core.timing import MAX_REQUEST_TIMEOUT_S
from services.models import check_source


class MediaPolicy(BaseModel):
    """Limits for image inputs; part of the catalog (`media:`), overridable by SLMSERVE_MEDIA_* env."""

    model_config = ConfigDict(extra="forbid")

    max_image_bytes: int = Field(10 * 2**20, ge=1, description="encoded size limit per image")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="width x height limit per image")
    fetch_timeout_s: float = Field(5.0, gt=0)
    max_redirects: int = Field(3, ge=0)
    allow_hosts: list[str] = Field(default_factory=list, description="host names always allowed")
    allow_networks: list[str] = Field(default_factory=list, description="CIDRs allowed despite the SSRF guard")


class CatalogError(ValueError):
    """A catalog file that cannot be used, with a message fit for a person."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SloOptions(_Strict):
    """Scale on what users feel (services/engine/autoscaling.py) instead of Ray Serve's request counts."""

    ttft_p90_s: float = Field(gt=0, description="scale up while the engines' TTFT p90 is above this")
    queue_per_replica: float = Field(4, gt=0, description="or while more requests than this wait per replica")
    cooldown_s: float = Field(60, ge=0, description="no second change in one direction within this")
    service_class: str | None = Field(
        None,
        description="follow the TTFT of this class's requests only (and more urgent ones): a class of "
        "edge.service_classes, whose batch traffic then adds no replica",
    )
    class_priority: int | None = Field(
        None, description="the service class's vLLM priority; the catalog sets it from service_class"
    )


class AutoscalingConfig(_Strict):
    """Ray Serve's autoscaling knobs (the subset worth exposing; names as Ray spells them), plus
    slmserve's SLO policy."""

    min_replicas: int = Field(
        1,
        ge=0,
        description="0 lets the model scale to zero when idle; its requests are then held while a replica "
        "starts (the model's `idle.hold_timeout_s`)",
    )
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float = Field(8, gt=0)
    upscale_delay_s: float = Field(30, ge=0)
    downscale_delay_s: float = Field(600, ge=0)
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="idle time before the last replica goes (min_replicas 0); downscale_delay_s if unset"
    )
    look_back_period_s: float | None = Field(None, gt=0, description="window Ray averages replica metrics over")
    slo: SloOptions | None = None

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def to_ray(self) -> dict[str, Any]:
        """Ray Serve's autoscaling_config: the SLO block becomes a custom policy."""
        config = self.model_dump(exclude_none=True, exclude={"slo"})
        if self.slo is not None:
            config["policy"] = {
                "policy_function": "services.engine.autoscaling:SloPolicy",
                "policy_kwargs": self.slo.model_dump(exclude={"service_class", "class_priority"}),
            }
        return config


class IdleOptions(_Strict):
    """What a model does when idle, and with the requests that find it so."""

    hold_timeout_s: float = Field(
        60, gt=0, description="a request waits this long for a replica to start, then gets 503 model_not_ready"
    )
    sleep_after_s: float | None = Field(
        None,
        gt=0,
        description="a GPU engine idle this long falls asleep (vLLM's sleep mode: weights to host memory, GPU "
        "memory freed) and wakes for the next request; CPU engines stay awake",
    )


class ActorOptions(_Strict):
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    memory: int | None = Field(None, ge=0, description="bytes")
    resources: dict[str, float] = Field(default_factory=dict)
    accelerator_type: str | None = None


class DeploymentOptions(_Strict):
    """Ray Serve options for one deployment: fixed replicas or autoscaling, never both."""

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(64, ge=1)
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    placement_group_bundles: list[dict[str, float]] | None = Field(
        None, description="one bundle per engine worker; bundle 0 also holds the replica itself"
    )
    placement_group_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] | None = None
    health_check_period_s: float = Field(10, gt=0)
    health_check_timeout_s: float = Field(30, gt=0)
    graceful_shutdown_timeout_s: float = Field(20, ge=0)
    max_constructor_retry_count: int | None = Field(
        None,
        ge=1,
        description="replica starts Serve tries before it reports the deployment failed (Serve: 3 per "
        "replica); 1 fails fast where an engine's start takes minutes",
    )

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        if self.num_replicas is None and self.autoscaling_config is None:
            self.num_replicas = 1
        return self

    @property
    def max_replicas(self) -> int:
        return self.autoscaling_config.max_replicas if self.autoscaling_config else self.num_replicas or 1

    @property
    def cpus_per_replica(self) -> float:
        """The replica actor's CPUs, else its placement group's (bundle 0 holds the replica itself)."""
        if self.placement_group_bundles:
            return sum(bundle.get("CPU", 0) for bundle in self.placement_group_bundles)
        return self.ray_actor_options.num_cpus

    @property
    def gpus_per_replica(self) -> float:
        """The replica actor's own GPUs, else its placement group's GPU bundles (one per engine worker)."""
        return self.ray_actor_options.num_gpus or sum(
            1 for bundle in self.placement_group_bundles or [] if bundle.get("GPU", 0) >= 1
        )

    def to_serve_options(self) -> dict[str, Any]:
        options = self.model_dump(exclude_none=True)
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.to_ray()
        actor = options["ray_actor_options"]
        if not actor.get("resources"):
            actor.pop("resources", None)
        return options


class RoutingOptions(_Strict):
    """How requests for one model pick among its engine replicas (services/routing/policies.py)."""

    policy: Literal["prefix-affinity", "session", "least-loaded", "power-of-two"] = Field(
        "prefix-affinity",
        description="prefix-affinity: the replica that served the longest matching prompt "
        "prefix (a session header pins); session: the session header pins; "
        "least-loaded; power-of-two: Ray Serve's default (random in direct mode)",
    )
    block_chars: int = Field(256, ge=16, le=65536, description="prompt characters per hashed block")
    index_blocks: int = Field(
        4096, ge=16, le=10_000_000, description="prefix-index bound per replica, in blocks (LRU beyond it)"
    )
    guard_imbalance: int = Field(
        8, ge=1, description="skip the preferred replica when it holds this many more requests than the least loaded"
    )
    guard_kv_usage: float = Field(0.9, gt=0, le=1, description="or when its KV-cache usage is above this")

    def router_kwargs(self) -> dict[str, Any]:
        return self.model_dump()


VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's engine can be sized for
LORA_ENGINE_ARGS = ("enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras", "lora_modules")


class LoraOptions(_Strict):
    """LoRA adapters of one model, from a directory: each subdirectory holding a PEFT adapter
    (adapter_config.json and its weights) is served under the subdirectory's name
    (services/engine/adapter_files.py, services/engine/adapters.py)."""

    adapters_dir: str = Field(min_length=1, description="directory of adapter subdirectories (a PVC in clusters)")
    max_loras: int = Field(4, ge=1, description="adapters in one batch (vLLM's max_loras)")
    max_lora_rank: int = Field(
        16, description=f"largest rank served, one of {LORA_RANKS}; larger adapters are left out"
    )
    max_cpu_loras: int | None = Field(
        None, ge=1, description="adapters an engine keeps loaded (vLLM's LRU cache); default max_loras"
    )
    refresh_s: float = Field(30, gt=0, le=3600, description="how often each replica rescans adapters_dir")

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int) -> int:
        if value not in LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {', '.join(map(str, LORA_RANKS))}")
        return value

    @model_validator(mode="after")
    def _cache_holds_a_batch(self) -> LoraOptions:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be at least max_loras")
        return self

    def engine_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"enable_lora": True, "max_loras": self.max_loras, "max_lora_rank": self.max_lora_rank}
        if self.max_cpu_loras is not None:
            args["max_cpu_loras"] = self.max_cpu_loras
        return args


class EngineProfile(_Strict):
    """One engine setup a model can run with; each replica picks the best one for its GPUs
    (services/engine/profiles.py). Its settings are laid over the entry's engine_args."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    precision: Literal["bf16", "fp8"] = Field(
        "bf16", description="fp8: vLLM's online fp8 quantization (needs compute capability 8.9+)"
    )
    tensor_parallel_size: int = Field(1, ge=1, le=16)
    gpus: list[str] = Field(
        default_factory=list, description="GPU families it suits (H100, H200, L40S, ...); empty: any GPU"
    )
    optimize: Literal["throughput", "latency"] = "throughput"
    min_gpu_memory_gib: float | None = Field(None, gt=0)
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vLLM engine arguments of this profile")

    @field_validator("engine_args")
    @classmethod
    def _profile_owns_its_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        for owned in ("model", "served_model_name", "dtype", "quantization", "tensor_parallel_size"):
            if owned in value:
                raise ValueError(f"{owned!r} comes from the profile's own fields (precision, tensor_parallel_size)")
        return value

    def vllm_engine_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"dtype": "bfloat16", **self.engine_args}
        if self.precision == "fp8":
            args["quantization"] = "fp8"
        if self.tensor_parallel_size > 1:
            args["tensor_parallel_size"] = self.tensor_parallel_size
        return args


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")


Modality = Literal["text", "image"]


def _text_only() -> list[Modality]:
    return ["text"]


class ModelEntry(_Strict):
    name: str = Field(description="the served model name clients put in `model`")
    aliases: list[str] = Field(default_factory=list)
    source: str = Field(description="Hugging Face id, local directory, embedded://NAME or generated://NAME")
    task: Literal["generate"] = "generate"
    modalities: list[Modality] = Field(default_factory=_text_only)
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vLLM engine arguments")
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    env: dict[str, str] = Field(default_factory=dict, description="environment of the engine replicas")
    cpu_placement: Literal["engine", "platform"] = Field(
        "engine",
        description="local runs on CPU: `engine` places this model's vLLM as bare `vllm serve` would (its "
        "worker bound to every core but the platform's); `platform` moves its replica, engine core and "
        "worker (unbound) to the platform's core once its engine runs, for a small side model whose "
        "wake-ups would otherwise stall a busier model's worker. No effect with GPUs or in a cluster",
    )
    max_in_flight: int | None = Field(
        None, ge=1, description="queued + running requests the cluster lets through to this model; more get 429"
    )
    idle: IdleOptions | None = Field(
        None, description="scale to zero (autoscaling_config.min_replicas: 0) and hold requests while a replica starts"
    )
    stored_responses: int = Field(
        1000,
        ge=0,
        description="Responses API answers each replica keeps for `previous_response_id` and lookups by id "
        "(oldest dropped first); 0 keeps none and ignores `store`, as bare vLLM does by default",
    )
    routing: RoutingOptions = Field(default_factory=RoutingOptions)
    lora: LoraOptions | None = Field(None, description="serve LoRA adapters of this model from a directory")
    profiles: list[EngineProfile] = Field(
        default_factory=list, description="engine setups per GPU; each replica picks the best for its hardware"
    )

    @field_validator("name", "aliases")
    @classmethod
    def _valid_names(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if not _NAME.match(name):
                raise ValueError(f"invalid model name {name!r}")
        return value

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        check_source(value)  # services/models: the source schemes
        return value

    @field_validator("engine_args")
    @classmethod
    def _no_model_in_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        for owned in ("model", "served_model_name"):
            if owned in value:
                raise ValueError(f"{owned!r} is set by the catalog entry itself, not in engine_args")
        for owned in LORA_ENGINE_ARGS:
            if owned in value:
                raise ValueError(f"{owned!r} comes from the entry's `lora:` block, not engine_args")
        return value

    def vllm_engine_args(self, profile: EngineProfile | None = None) -> dict[str, Any]:
        """engine_args plus what the entry's other blocks ask of the engine (a profile, LoRA)."""
        return {
            **self.engine_args,
            **(profile.vllm_engine_args() if profile else {}),
            **(self.lora.engine_args() if self.lora else {}),
        }

    @model_validator(mode="after")
    def _profiles_fit_the_replica(self) -> ModelEntry:
        names = [profile.name for profile in self.profiles]
        if len(set(names)) != len(names):
            raise ValueError("profile names must be unique within a model")
        gpus = self.deployment.gpus_per_replica
        for profile in self.profiles:
            if profile.tensor_parallel_size > max(1, int(gpus)):
                raise ValueError(
                    f"profile {profile.name!r} needs {profile.tensor_parallel_size} GPUs per replica; "
                    f"the deployment gives a replica {gpus:g}"
                )
        return self

    @model_validator(mode="after")
    def _a_card_share_fits_awake(self) -> ModelEntry:
        """A replica given part of a GPU shares the card with others that Ray packs beside it. One that
        never sleeps must fit in its part; one that sleeps may ask for more, since the card's sleepers
        take turns (services/engine/card_memory.py), but never for more than the card."""
        part = self.deployment.gpus_per_replica
        share = self.gpu_share
        if not 0 < part < 1 or share <= part + 1e-9:
            return self
        if self.idle is None or self.idle.sleep_after_s is None:
            raise ValueError(
                f"gpu_memory_utilization {share:g} is more than the replica's {part:g} of a GPU: Ray may pack "
                "replicas beside it that cannot start. Lower it, or let the model sleep when idle "
                "(idle.sleep_after_s) so that the card's sleepers take turns"
            )
        return self

    @property
    def gpu_share(self) -> float:
        """The part of its card's memory an awake engine holds (vLLM's gpu_memory_utilization)."""
        return float(self.engine_args.get("gpu_memory_utilization", VLLM_GPU_MEMORY_UTILIZATION))

    @model_validator(mode="after")
    def _zero_replicas_hold_requests(self) -> ModelEntry:
        if self.scales_to_zero and self.idle is None:
            raise ValueError(
                "autoscaling_config.min_replicas: 0 needs `idle: {hold_timeout_s: ...}`: how long a request "
                "waits while a replica starts"
            )
        if self.idle is not None and not self.scales_to_zero and self.idle.sleep_after_s is None:
            raise ValueError(
                "`idle` applies to a model that scales to zero (autoscaling_config.min_replicas: 0) or sleeps "
                "(idle.sleep_after_s)"
            )
        return self

    @property
    def scales_to_zero(self) -> bool:
        """Whether the model may have no replica: its requests are then held while one starts, and placed
        by the platform application (which can hold them) rather than straight onto an engine replica."""
        config = self.deployment.autoscaling_config
        return config is not None and config.min_replicas == 0

    @property
    def hold_timeout_s(self) -> float | None:
        """How long a request may wait for a replica to start: set where the model scales to zero."""
        return self.idle.hold_timeout_s if self.scales_to_zero and self.idle is not None else None

    @property
    def sleep_after_s(self) -> float | None:
        """How long an idle engine stays awake before vLLM's sleep mode: set where the model sleeps."""
        return self.idle.sleep_after_s if self.idle is not None else None

    @property
    def deployment_name(self) -> str:
        """Ray Serve deployment names allow neither '/' nor '#'."""
        return "engine-" + re.sub(r"[^A-Za-z0-9._-]+", "-", self.name)

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    @property
    def max_model_len(self) -> int | None:
        return self.engine_args.get("max_model_len")

    @property
    def max_images(self) -> int:
        """Images per request: vLLM's own limit_mm_per_prompt, 1 by default for vision models."""
        if "image" not in self.modalities:
            return 0
        limit = (self.engine_args.get("limit_mm_per_prompt") or {}).get("image", 1)
        return limit if isinstance(limit, int) else int(limit.get("count", 1))

    @property
    def has_replica_choice(self) -> bool:
        """Whether requests can go to more than one replica (then a routing policy picks)."""
        return self.deployment.autoscaling_config is not None or (self.deployment.num_replicas or 1) > 1

    @property
    def router_reads_body(self) -> bool:
        """Whether this model's replica choice reads request bodies: slmserve's policies do, for a
        Responses API follow-up's `previous_response_id` (only its replica holds the parent), a LoRA
        adapter's `model` and prefix affinity's prompt; Ray's power-of-two reads nothing."""
        return self.has_replica_choice and self.routing.policy != "power-of-two"

    @property
    def adapter_affinity(self) -> bool:
        """Whether routing prefers the replicas holding a request's LoRA adapter: the policies that
        choose by load or prefix do; a session pin and Ray's power-of-two do not."""
        return self.lora is not None and self.routing.policy in ("prefix-affinity", "least-loaded")

    @property
    def parallel_size(self) -> int:
        args = self.engine_args
        return int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1))

    @model_validator(mode="after")
    def _multi_gpu_needs_placement(self) -> ModelEntry:
        # A replica spanning several GPUs runs vLLM's Ray executor inside a placement group whose
        # bundles hold one GPU per worker (as Ray Serve LLM does); say so instead of failing later.
        if self.parallel_size > 1 and self.deployment.ray_actor_options.num_gpus == 0:
            if self.deployment.gpus_per_replica < self.parallel_size:
                raise ValueError(
                    f"tensor/pipeline parallel size {self.parallel_size} needs "
                    f"deployment.placement_group_bundles with {self.parallel_size} GPU bundles"
                )
            if self.engine_args.get("distributed_executor_backend") != "ray":
                raise ValueError("multi-GPU replicas need engine_args.distributed_executor_backend: ray")
        return self

    @model_validator(mode="after")
    def _image_limit_needs_vision(self) -> ModelEntry:
        if (self.engine_args.get("limit_mm_per_prompt") or {}).get("image") and "image" not in self.modalities:
            raise ValueError("limit_mm_per_prompt allows images but modalities lacks 'image'")
        return self


class RateLimitOptions(_Strict):
    """Per API-key tenant, across the cluster; unset means unlimited."""

    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0, description="prompt (estimated) plus max_tokens")


class RateLimits(_Strict):
    default: RateLimitOptions = Field(default_factory=RateLimitOptions)
    tenants: dict[str, RateLimitOptions] = Field(default_factory=dict)


DataPlane = Literal["direct", "routed"]
EDGE_DEPLOYMENT: dict[str, Any] = {"max_ongoing_requests": 1024, "ray_actor_options": {"num_cpus": 0.5}}


class EdgeOptions(_Strict):
    """The HTTP edge (the engine replicas in direct mode, the router replicas in routed mode); its
    admission limits hold across the cluster (services/edge/limits.py)."""

    data_plane: Literal["auto", "direct", "routed"] = Field(
        "auto",
        description="direct: each engine replica serves HTTP itself and HAProxy forwards to it, "
        "choosing the model's application by the body's `model`; routed: a router replica dispatches "
        "by `model` to each model's engine deployment (every token crosses it, and a cut stream ends "
        "with an SSE error event); auto: direct",
    )
    session_header: str = Field(
        "X-Session-Id",
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="request header that names a conversation for session affinity (one name per cluster: "
        "Ray Serve's HAProxy forwards one)",
    )
    request_timeout_s: float = Field(
        600, gt=0, le=MAX_REQUEST_TIMEOUT_S, description="deadline of a request; the engine aborts it after"
    )
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="larger request bodies get 413")
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    service_classes: ServiceClasses = Field(
        default_factory=ServiceClasses,
        description="tenants' engine priority and fair share (services/core/service_classes.py)",
    )
    metrics_tenants: list[str] = Field(
        default_factory=list,
        description="with API keys on, the tenants whose keys may read /metrics (which shows every tenant's "
        "usage); others get 403. Empty: every valid key",
    )
    deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions.model_validate(EDGE_DEPLOYMENT))


class TracingOptions(_Strict):
    """OpenTelemetry traces of each request, from the edge and from vLLM's engine (services/edge/tracing.py)."""

    otlp_traces_endpoint: str | None = Field(
        None,
        pattern=r"^https?://",
        description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; "
        "unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else no tracing",
    )
    service_name: str = Field("slmserve", min_length=1, description="the edge's `service.name`")


class ClusterAutoscaler(_Strict):
    """Ray's autoscaler, which adds worker nodes for replicas that cannot be placed and removes idle ones."""

    idle_timeout_s: int = Field(300, ge=0, description="a worker node with nothing on it this long is removed")
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"] = Field(
        "Default", description="how many nodes Ray's autoscaler launches at once (KubeRay's upscalingMode)"
    )


class NodeGroup(_Strict):
    """One shape of worker node the cluster scales: a worker group of the Helm chart (its pods'
    GPUs, CPUs and memory) and a node type of Ray's autoscaler."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$", description="e.g. gpu-1x (a Kubernetes name)")
    gpus: int = Field(ge=0, description="GPUs per node")
    cpus: float = Field(gt=0, description="CPUs per node that Ray schedules on")
    memory_gib: float = Field(gt=0, description="memory per node (the pod's request and limit)")
    min_nodes: int = Field(0, ge=0)
    max_nodes: int = Field(ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> NodeGroup:
        if self.min_nodes > self.max_nodes:
            raise ValueError("min_nodes must not exceed max_nodes")
        return self

    def fits(self, options: DeploymentOptions) -> bool:
        """Whether one replica fits on one node of this group (a multi-GPU replica packs its GPUs on one)."""
        return options.gpus_per_replica <= self.gpus and options.cpus_per_replica <= self.cpus


class ClusterOptions(_Strict):
    """The worker nodes the application runs on when Ray's autoscaler manages them: the Helm chart
    renders its worker groups and autoscaler options from here, and the local autoscaling cluster
    (loadtests/autoscaling_cluster.py) its node types."""

    autoscaler: ClusterAutoscaler = Field(default_factory=ClusterAutoscaler)
    node_groups: list[NodeGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_groups(self) -> ClusterOptions:
        names = [group.name for group in self.node_groups]
        if len(set(names)) != len(names):
            raise ValueError("node group names must be unique")
        return self

    def ray_node_types(self) -> dict[str, dict[str, Any]]:
        """The groups as Ray autoscaler `available_node_types`."""
        return {
            group.name: {
                "resources": {"CPU": group.cpus, "GPU": group.gpus} if group.gpus else {"CPU": group.cpus},
                "node_config": {},
                "min_workers": group.min_nodes,
                "max_workers": group.max_nodes,
            }
            for group in self.node_groups
        }


class Catalog(_Strict):
    version: Literal[1] = 1
    description: str = ""
    edge: EdgeOptions = Field(default_factory=EdgeOptions)
    tracing: TracingOptions = Field(default_factory=TracingOptions)
    media: MediaPolicy = Field(default_factory=MediaPolicy)
    cluster: ClusterOptions | None = Field(
        None,
        description="worker node groups and Ray's autoscaler (the Helm chart's worker groups); "
        "unset: the chart's values decide",
    )
    models: list[ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Catalog:
        seen: dict[str, str] = {}
        for entry in self.models:
            for name in entry.names:
                if name in seen:
                    raise ValueError(f"model name {name!r} is used by both {seen[name]!r} and {entry.name!r}")
                seen[name] = entry.name
        deployment_names = [entry.deployment_name for entry in self.models]
        if len(set(deployment_names)) != len(deployment_names):
            raise ValueError("two model names map to the same deployment name")
        return self

    @model_validator(mode="before")
    @classmethod
    def _edge_block(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "router" in data:  # the block's old name: one rename, said once per load
            if "edge" in data:
                raise ValueError("set `edge:` only (`router:` is its old name)")
            warnings.warn("the catalog's `router:` block is now called `edge:`; rename it", FutureWarning, stacklevel=2)
            data = {("edge" if key == "router" else key): value for key, value in data.items()}
        # Routed, every token crosses a router replica: two by default, so losing one cuts only its
        # own streams. Direct, the platform's edge answers control routes and what HAProxy cannot place: one.
        edge = data.get("edge") or {}
        if not isinstance(edge, dict):
            return data
        deployment = edge.get("deployment")
        if edge.get("data_plane") != "routed" or (deployment is not None and not isinstance(deployment, dict)):
            return data
        deployment = dict(deployment or EDGE_DEPLOYMENT)
        if "num_replicas" not in deployment and "autoscaling_config" not in deployment:
            deployment["num_replicas"] = 2
        return {**data, "edge": {**edge, "deployment": deployment}}

    @model_validator(mode="after")
    def _engines_schedule_by_priority(self) -> Catalog:
        """With service classes every engine runs vLLM's priority scheduling (a request's priority
        other than 0 is an error without it); an entry that asks for another policy is a mistake."""
        for key, value in self.edge.service_classes.engine_args().items():
            for entry in self.models:
                if entry.engine_args.setdefault(key, value) != value:
                    raise ValueError(f"{entry.name}: engine_args.{key} must be {value!r} with edge.service_classes")
        return self

    @model_validator(mode="after")
    def _slo_classes_are_known(self) -> Catalog:
        """An SLO that follows one service class carries that class's priority to the engine replicas,
        which see each request's priority but not the catalog's classes."""
        classes = self.edge.service_classes.classes
        for entry in self.models:
            config = entry.deployment.autoscaling_config
            slo = config.slo if config is not None else None
            if slo is None or slo.service_class is None:
                continue
            if slo.service_class not in classes:
                raise ValueError(
                    f"{entry.name}: autoscaling_config.slo.service_class {slo.service_class!r} is not a class of "
                    f"edge.service_classes ({', '.join(classes) or 'none defined'})"
                )
            slo.class_priority = classes[slo.service_class].priority
        return self

    @model_validator(mode="after")
    def _replicas_fit_a_node_group(self) -> Catalog:
        if self.cluster is None:
            return self
        for entry in self.models:
            options = entry.deployment
            if not any(group.fits(options) for group in self.cluster.node_groups):
                raise ValueError(
                    f"a replica of {entry.name} needs {options.gpus_per_replica:g} GPUs and "
                    f"{options.cpus_per_replica:g} CPUs on one node; no group of cluster.node_groups has them"
                )
        return self

    @property
    def data_plane(self) -> DataPlane:
        return "routed" if self.edge.data_plane == "routed" else "direct"

    def deployments(self) -> list[DeploymentOptions]:
        """The router's deployment options and each engine's."""
        return [self.edge.deployment, *(entry.deployment for entry in self.models)]

    @property
    def cpus_needed(self) -> float:
        """Logical CPUs that every deployment at its largest replica count asks Ray for (the router's
        and the engines'; the hub and the limit broker ask for none)."""
        return sum(options.max_replicas * options.cpus_per_replica for options in self.deployments())

    @property
    def tenants(self) -> list[str]:
        """Every tenant the catalog names (rate limits, service classes), and anonymous."""
        named = {
            *self.edge.rate_limits.tenants,
            *self.edge.service_classes.tenants,
            *self.edge.metrics_tenants,
            ANONYMOUS,
        }
        return sorted(named)

    def resolve(self, name: str) -> ModelEntry | None:
        """The entry serving `name` (a served name or an alias)."""
        for entry in self.models:
            if name in entry.names:
                return entry
        return None


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_catalog(data: Any, origin: str = "catalog") -> Catalog:
    if not isinstance(data, dict):
        raise CatalogError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Catalog.model_validate(data)
    except ValidationError as error:
        raise CatalogError(f"{origin} is invalid:\n{_format_errors(error)}") from None


def load_catalog(path: Path) -> Catalog:
    try:
        text = path.read_text()
    except OSError as error:
        raise CatalogError(f"cannot read catalog {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogError(f"{path} is not valid YAML: {error}") from None
    return parse_catalog(data, str(path))
