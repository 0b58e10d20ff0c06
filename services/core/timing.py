"""The platform's timing constants, in one place. Most of them are one side of a conversation between
processes: a period is how often one process tells another something, a window or staleness bound how
long the receiver trusts what it was told, a timeout how long a caller waits. Constants that must
agree are next to each other, and `tests/unit/test_timing.py` checks how they relate (and checks against
Ray's own defaults where Ray is the other side).

Per-deployment settings (request deadlines, health checks, autoscaling delays) are the catalog's;
these are the ones no catalog should need to change."""

from __future__ import annotations

# --- Engine replica -> MetricsHub ------------------------------------------------------------------
# A replica's buffered metric records (NIM request records, routing decisions) reach the hub this often.
RECORDS_FLUSH_PERIOD_S = 0.5
# A replica's vLLM metrics snapshot (the gauges routing and autoscaling read) reaches the hub this often...
ENGINE_SNAPSHOT_PERIOD_S = 1.0
# ...with vLLM's whole series for /metrics every this many seconds: rendering them holds the replica's
# GIL for about 10 ms, which delayed the next token of every stream once a second on a CPU node.
ENGINE_SERIES_PERIOD_S = 5.0
# ...and the hub drops a replica whose last snapshot is this old: it is gone (several periods, so a
# replica busy enough to miss one or two is not mistaken for a dead one).
SNAPSHOT_STALE_S = 5.0
# A scrape shows replica counts and autoscaler targets read from Serve's controller at most this long
# ago: two controller calls (its details are heavy) per read, on cores a CPU engine shares; replica
# counts change over tens of seconds, and a scrape at 3 Hz no longer reads them every second.
REPLICA_STATES_MAX_AGE_S = 5.0
# The TTFT the autoscaling policy sees is that of the last this many seconds.
TTFT_WINDOW_S = 10.0

# --- Replica choice ----------------------------------------------------------------------------------
# Serve asks each engine replica for its load (record_routing_stats) this often, and waits as long
# (Ray's defaults, 10 s and 30 s, are too slow for load-aware routing).
ROUTING_STATS_PERIOD_S = 1.0
# The router counts its own sends to a replica until a report made after them, but no longer than this:
# sends older than a few report periods are in one, or the replica is too busy to report and their
# count would only grow. Wall-clock, as the replicas stamp their reports.
SENT_WINDOW_S = 5.0
# A replica's report counts only the requests that had reached its engine: a send made less than this
# before the report may still be on its way (HAProxy, the edge's checks, admission at the broker) and
# keeps counting until a later report. A burst of sends is then never wiped by a report made during it
# (tests/live/two_replicas saw all of ten streams go to one replica that way on a busy 2-core machine).
IN_TRANSIT_S = 1.0
# A request the router sent for a LoRA adapter reaches its engine and has it loaded within this: a listing
# of the engine's LoRA cache made sooner after the send may predate the load, so only a later one without
# the adapter says the engine does not hold it (CI: a listing in that gap sent the adapter's next request
# to the other replica, and then both held it).
ADAPTER_LOAD_S = 5.0
# HAProxy waits RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_TIMEOUT_S (5 s) for the ReplicaPicker's
# choice; answer before it with a clear 503 instead of its timeout.
CHOOSE_TIMEOUT_S = 4.0

# --- Admission (the LimitBroker actor) ---------------------------------------------------------------
# A replica waits this long for the broker; past it, limited requests fail closed with 503. Longer
# than a broker restart (Serve notices the death within BROKER_HEALTH_CHECK_S, then starts a new one).
BROKER_TIMEOUT_S = 15.0
BROKER_HEALTH_CHECK_S = 1.0
# A call the broker dropped as it died is made again after this.
BROKER_RETRY_S = 0.25
# An edge that holds tickets and heard nothing from the broker for this long asks who it is, so that
# a new broker learns of the tickets within RECOVERY_S, during which it admits nothing.
SYNC_S = 1.0
RECOVERY_S = 2.5
# A ticket never released (its replica died) expires this long after the request's deadline.
TICKET_GRACE_S = 60.0
# After sending the broker a released ticket, an edge holds the next ones this long and sends them
# together: under load one call for many instead of one per request (each is a Serve call, the
# broker's largest cost per request in loadtests/scale.py); an edge that is not busy releases at once.
RELEASE_BATCH_S = 0.02
# A service class that sent a request this recently keeps the unused part of its guaranteed slots free
# for its next one; idler classes lend theirs (services/edge/admission.py).
CLASS_ACTIVE_S = 10.0

# --- Readiness (read from Serve's controller) --------------------------------------------------------
READINESS_POLL_S = 1.0  # while any model is loading or suspect
READINESS_POLL_READY_S = 2.0  # once all are up
# A replica failure the router saw itself counts (one running replica fewer) until the controller's view
# shows it, or this long.
SUSPECT_MAX_S = 120.0
# What a 503 tells a client to wait before trying again (the Retry-After header, whole seconds).
RETRY_AFTER_S = 5

# --- The edge asking engine deployments ----------------------------------------------------------------
# For their adapters, schemas or profile.
ENGINE_QUERY_TIMEOUT_S = 5.0
# How stale the routed-mode router's list of a model's LoRA adapters may be before a name it does not
# know is checked again (an adapter that just appeared in adapters_dir is reachable this soon after its
# replicas registered it).
ADAPTER_LIST_MAX_AGE_S = 1.0
# The longest request deadline a catalog may set (edge.request_timeout_s).
MAX_REQUEST_TIMEOUT_S = 3000.0
# A replaced adapter's old snapshot is deleted this long after: longer than any request's deadline, so
# no running request loses its weights.
ADAPTER_SNAPSHOT_GRACE_S = 3600.0

# Engines sharing a GPU take turns on its memory (services/engine/card_memory.py): a wake waits at most
# this long for the least recently used engines to finish their requests and fall asleep (then 503).
CARD_CLAIM_TIMEOUT_S = 30.0
# An engine's start waits longer: the engine that must sleep for it may itself still be starting.
CARD_START_CLAIM_TIMEOUT_S = 900.0
# An engine tells its card it was used at most this often: the card's LRU order is this coarse.
CARD_TOUCH_PERIOD_S = 1.0

# --- Ingress -------------------------------------------------------------------------------------------
# Serve's controller checks each node's proxy (HAProxy's manager, or the proxy actor) this often and
# restarts it after 3 failures in a row (Ray's fixed threshold); Ray's 10 s left a killed HAProxy down
# for 33 s, 1 s for 4.9-6.5 s (docs/reliability.md). A check is one admin-socket command: twice a
# second costs nothing measurable.
PROXY_HEALTH_CHECK_PERIOD_S = 0.5

# `slmserve serve` told to stop waits for its replicas' graceful shutdown (the longest of the
# catalog's graceful_shutdown_timeout_s) and this much more for Serve to report them gone.
STOP_MARGIN_S = 10.0

# A local start that found a dead instance's HAProxy on its port waits this long after stopping it.
HAPROXY_STOP_WAIT_S = 1.0

# A router replica that starts while the engines run (a rolled catalog, a replacement) waits at most
# this long for its first view of them before it takes traffic.
INGRESS_WARM_TIMEOUT_S = 10.0
# The platform router writes its catalog's models into HAProxy's map at start; HAProxy may be
# reloading then, so it tries this many times, this far apart.
MODEL_MAP_ATTEMPTS = 30
MODEL_MAP_RETRY_S = 2.0

# --- Local start (`slmserve serve`) --------------------------------------------------------------------
# Serve's controller reconciles every 0.1 s by default. On a machine whose cores the engine fills, that
# loop and the GCS calls it makes take 0.03 of a core from the engine (loadtests/cpu_share.py); every
# 0.5 s it takes 0.01, and Serve reacts to a replica change or an autoscaling decision at most 0.4 s
# later. A cluster's controller runs on the head node, beside no engine, and keeps Ray's default.
LOCAL_CONTROL_LOOP_INTERVAL_S = 0.5
# A local Ray that did not start (its raylet missed Ray's 30 s to register on a busy machine) is tried
# this many times in all, waiting a little longer each time.
RAY_START_ATTEMPTS = 3
RAY_START_BACKOFF_S = 2.0
ROUTER_START_TIMEOUT_S = 180  # the platform's router answers within seconds, while engines load
