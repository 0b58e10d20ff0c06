"""A changed catalog rolled onto a running `slmserve serve` under a steady load (issue 34 item 2): the
same operation as the chart's serveConfigV2 change on a cluster (services/runtime.py apply_catalog).

The cpu catalog, its model on two engine replicas, 8 streams kept running against it throughout
(each re-opened as it ends) plus a probe every half second. Three changes, each written to the
catalog file and applied with SIGHUP:
1. an engine argument changed: Serve replaces both replicas, one at a time;
2. a second model added (the same weights under another name): served once ready, direct;
3. that model removed while streams to it run: they finish, then it answers 404;
4. the instance told to stop (SIGTERM, as Kubernetes or a supervisor does) with its streams in
   flight: they finish, then it exits 0.
Verdict: no failed request and no cut stream on the model that stays, none cut on the one removed.

    .venv/bin/python -m loadtests.rolling_update   # about 6 minutes on 2 cores
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from loadtests.harness import ROOT, command_line, started_at
from loadtests.report import write_section
from testkit.exposition import Exposition
from testkit.serving import ServerProcess, catalog_variant, serving, until

MODEL = "smollm2-135m-instruct"
ADDED = "smollm2-second"
STREAMS = 8
STEP_TIMEOUT_S = 600


def stream_once(base_url: str, model: str, tag: str) -> str:
    """One streamed chat: done, sse_error, closed, or refused:<status>:<error code>:<served by>."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"{tag}: tell a story."}],
        "max_tokens": 48,
        "ignore_eos": True,
        "stream": True,
    }
    try:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120, trust_env=False) as r:
            if r.status_code != 200:
                try:
                    code = json.loads(r.read())["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "-"
                return f"refused:{r.status_code}:{code}:{r.headers.get('x-slmserve-served-by', 'haproxy?')}"
            for line in r.iter_lines():
                if line.startswith('data: {"error"'):
                    return "sse_error"
                if line == "data: [DONE]":
                    return "done"
        return "closed"
    except httpx.HTTPError:
        return "closed"


@dataclass
class Load:
    """`STREAMS` streams re-opened as they end, until stopped; outcomes counted."""

    base_url: str
    model: str
    outcomes: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, index: int) -> None:
        turn = 0
        while not self._stop.is_set():
            self.outcomes[stream_once(self.base_url, self.model, f"stream {index} turn {turn}")] += 1
            turn += 1

    def stop(self) -> None:
        self._stop.set()


def replica_states(base_url: str, model: str) -> dict[str, float]:
    states = Exposition.fetch(f"{base_url}/metrics").by("state", "slmserve_model_replicas", model_name=model)
    return {state: count for state, count in states.items() if count}


def replicas_answering(base_url: str, model: str, samples: int = 8) -> set[str]:
    seen = set()
    for i in range(samples):
        body = {"model": model, "messages": [{"role": "user", "content": f"which replica {time.time()} {i}"}]}
        response = httpx.post(
            f"{base_url}/v1/chat/completions", json={**body, "max_tokens": 1}, timeout=60, trust_env=False
        )
        seen.add(response.headers.get("x-slmserve-replica", f"status {response.status_code}"))
    return seen


def step_seconds(condition) -> float:
    """Seconds until `condition()` holds (testkit.serving.until), or the step has failed."""
    seconds = until(condition, STEP_TIMEOUT_S, period_s=1)
    if seconds is None:
        raise TimeoutError(f"not within {STEP_TIMEOUT_S:.0f}s")
    return seconds


def apply(server: ServerProcess, path: Path, catalog: dict) -> None:
    path.write_text(yaml.safe_dump(catalog))
    server.process.send_signal(signal.SIGHUP)


def main(argv: list[str] | None = None) -> int:
    command_line(__doc__).parse_args(argv)  # no options: --help says what the run does

    def two_replicas(catalog: dict) -> None:
        entry = catalog["models"][0]
        entry["deployment"]["num_replicas"] = 2
        entry["deployment"]["graceful_shutdown_timeout_s"] = 120
        entry["env"] = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}

    path = catalog_variant("cpu", two_replicas)
    catalog = yaml.safe_load(path.read_text())
    rows = []
    with serving(path, replicas=2) as server:
        base = server.base_url
        load = Load(base, MODEL)
        with concurrent.futures.ThreadPoolExecutor(STREAMS + 4) as pool:
            workers = [pool.submit(load.run, i) for i in range(STREAMS)]
            time.sleep(5)

            print("[rolling] 1: an engine argument changed (both replicas replaced)", flush=True)
            old = replicas_answering(base, MODEL)
            before = Counter(load.outcomes)
            catalog["models"][0]["engine_args"]["max_num_seqs"] = (
                catalog["models"][0]["engine_args"].get("max_num_seqs", 8) - 1
            )
            apply(server, path, catalog)
            took = step_seconds(
                lambda: replica_states(base, MODEL) == {"RUNNING": 2.0} and not (replicas_answering(base, MODEL) & old)
            )
            rows.append(("engine argument changed, 2 replicas rolled", took, load.outcomes - before, Counter()))
            print(f"[rolling] 1: done in {took:.0f}s; streams {dict(load.outcomes - before)}", flush=True)

            print("[rolling] 2: a model added", flush=True)
            before = Counter(load.outcomes)
            added = json.loads(json.dumps(catalog["models"][0]))
            added.update(name=ADDED, aliases=[], deployment={**added["deployment"], "num_replicas": 1})
            catalog["models"].append(added)
            apply(server, path, catalog)
            took = step_seconds(lambda: stream_once(base, ADDED, "added?") == "done")
            served_by = httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": ADDED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                timeout=60,
                trust_env=False,
            ).headers.get("x-slmserve-served-by")
            rows.append((f"model added (served by: {served_by})", took, load.outcomes - before, Counter()))
            print(f"[rolling] 2: served after {took:.0f}s by {served_by}", flush=True)

            print("[rolling] 3: that model removed while streams to it run", flush=True)
            before = Counter(load.outcomes)
            leaving = [pool.submit(stream_once, base, ADDED, f"leaving {i}") for i in range(2)]
            time.sleep(1)
            catalog["models"].pop()
            apply(server, path, catalog)
            took = step_seconds(
                lambda: (
                    httpx.post(
                        f"{base}/v1/chat/completions",
                        json={"model": ADDED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                        timeout=60,
                        trust_env=False,
                    ).status_code
                    == 404
                )
            )
            removed = Counter(future.result() for future in leaving)
            rows.append(("model removed (2 streams to it in flight)", took, load.outcomes - before, removed))
            print(f"[rolling] 3: 404 after {took:.0f}s; its streams {dict(removed)}", flush=True)

            print("[rolling] 4: the instance told to stop (SIGTERM) with its streams in flight", flush=True)
            before = Counter(load.outcomes)
            load.stop()  # no stream is re-opened: those in flight must finish
            server.process.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.result()
            took = step_seconds(lambda: server.process.poll() is not None)
            finished = load.outcomes - before
            rows.append(
                (f"instance stopped (SIGTERM, exit status {server.process.returncode})", took, finished, Counter())
            )
            print(f"[rolling] 4: exited after {took:.0f}s; its streams {dict(finished)}", flush=True)
            stopped_cleanly = server.process.returncode == 0
    ok = stopped_cleanly and all(
        set(kept) <= {"done"} and set(leaving_outcomes) <= {"done"} and sum(kept.values()) > 0
        for _, _, kept, leaving_outcomes in rows
    )
    write_report(rows, ok)
    print("[rolling] PASS" if ok else "[rolling] FAIL", flush=True)
    return 0 if ok else 1


def write_report(rows: list, ok: bool) -> None:
    started = started_at()
    table = "".join(
        f"| {step} | {seconds:.0f} s | {', '.join(f'{k} {v}' for k, v in sorted(kept.items())) or '-'} | "
        f"{', '.join(f'{k} {v}' for k, v in sorted(leaving.items())) or '-'} |\n"
        for step, seconds, kept, leaving in rows
    )
    body = f"""## Rolling a changed catalog onto a running instance

Run {started}: `.venv/bin/python -m loadtests.rolling_update`. `slmserve serve` on the cpu catalog,
its model on two engine replicas (direct data plane), {STREAMS} streams of 48 tokens re-opened as
they end for the whole run; each change written to the catalog file and applied with SIGHUP
(`services/runtime.py` apply_catalog, what a serveConfigV2 change does on a cluster), then the
instance sent SIGTERM (`runtime.stop_gracefully`). "Streams" are those of the load that ended during
the step, by how they ended; a verdict needs every one "done".

| change | until it took effect | streams of the model that stays | streams of the model removed |
|---|---|---|---|
{table}
Verdict: {"pass" if ok else "FAIL"}.
"""
    write_section(ROOT / "docs" / "reliability.md", "rolling-update", body)
    print("[rolling] wrote docs/reliability.md", flush=True)


if __name__ == "__main__":
    sys.exit(main())
