"""Locust users speaking the OpenAI API to slmserve (or any OpenAI-compatible server).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000                       # web UI
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 2 -t 60s --csv out/lt
    locust -f loadtests/locustfile.py ... VisionUser MixedModelUser                       # pick user classes

Each streamed request reports, besides the HTTP request itself, three entries of its own:
`ttft` and `itl` (milliseconds) and `output_tokens` (its "response time" column holds the token
count), so locust's stats, CSV files and web UI show them. Options (CLI flag or environment):
--model / SLMSERVE_LT_MODEL, --models / SLMSERVE_LT_MODELS ("name:weight,..."), --vision-model /
SLMSERVE_LT_VISION_MODEL, --prompt-words / SLMSERVE_LT_PROMPT_WORDS, --max-tokens /
SLMSERVE_LT_MAX_TOKENS, --ignore-eos / SLMSERVE_LT_IGNORE_EOS, --api-key / SLMSERVE_LT_API_KEY.
"""

from __future__ import annotations

import base64
import io
import random
import time
from pathlib import Path

from locust import HttpUser, events, task
from locust.exception import StopUser

from loadtests.sse import StreamMeter, parse_model_mix, prompt_of

MAX_RETRY_AFTER_S = 5.0  # the longest Retry-After a user honours


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--model", env_var="SLMSERVE_LT_MODEL", default="default", help="model for single-model users")
    parser.add_argument(
        "--models",
        env_var="SLMSERVE_LT_MODELS",
        default="",
        help="weighted model mix for MixedModelUser, e.g. 'default:3,moe:1'",
    )
    parser.add_argument("--vision-model", env_var="SLMSERVE_LT_VISION_MODEL", default="vision")
    parser.add_argument("--prompt-words", env_var="SLMSERVE_LT_PROMPT_WORDS", type=int, default=64)
    parser.add_argument("--max-tokens", env_var="SLMSERVE_LT_MAX_TOKENS", type=int, default=64)
    parser.add_argument(
        "--ignore-eos", env_var="SLMSERVE_LT_IGNORE_EOS", default="true", help="fixed-length outputs (true/false)"
    )
    parser.add_argument("--api-key", env_var="SLMSERVE_LT_API_KEY", default="", help="sent as a Bearer token")
    parser.add_argument(
        "--api-key-file",
        env_var="SLMSERVE_LT_API_KEY_FILE",
        default="",
        help="a file holding the key (the chart mounts its Secret: never a variable or an argument)",
    )
    parser.add_argument(
        "--accept-429",
        env_var="SLMSERVE_LT_ACCEPT_429",
        default="false",
        help="count 429 (admission/rate limit) as its own entry, not as a failure (true/false)",
    )


def _report(environment, name: str, value: float, length: int = 0) -> None:
    environment.events.request.fire(
        request_type="METRIC", name=name, response_time=value, response_length=length, exception=None, context={}
    )


def _tiny_png() -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


class OpenAIUser(HttpUser):
    abstract = True
    retry_after_s = 0.0  # set by a 429's Retry-After, spent by the next wait

    def wait_time(self) -> float:
        waited, self.retry_after_s = self.retry_after_s, 0.0
        return waited + random.uniform(0.0, 0.2)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.options = options
        key = Path(options.api_key_file).read_text().strip() if options.api_key_file else options.api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.prompt = prompt_of(options.prompt_words)

    def _sampling(self) -> dict:
        body = {"max_tokens": self.options.max_tokens, "temperature": 0.7}
        if str(self.options.ignore_eos).lower() in ("1", "true", "yes"):
            body["ignore_eos"] = True
        return body

    def _served_models(self) -> set[str]:
        response = self.client.get("/v1/models", headers=self.headers, name="/v1/models")
        models = response.json().get("data", []) if response.ok else []
        return {m["id"] for m in models} | {alias for m in models for alias in m.get("aliases", [])}

    def _rejected(self, response) -> bool:
        """A 429 under --accept-429: reported as its own `429 rejected` entry, not a failure."""
        if response.status_code != 429 or str(self.options.accept_429).lower() not in ("1", "true", "yes"):
            return False
        response.success()
        _report(self.environment, "429 rejected", 0)
        # As the openai client does: wait as long as Retry-After asks (capped) before the next request.
        try:
            self.retry_after_s = min(float(response.headers.get("retry-after", "0")), MAX_RETRY_AFTER_S)
        except ValueError:
            self.retry_after_s = 0.0
        return True

    def stream(self, path: str, body: dict, name: str) -> None:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        meter = StreamMeter(started)
        with self.client.post(
            path, json=body, headers=self.headers, stream=True, name=name, catch_response=True
        ) as response:
            if self._rejected(response):
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            for line in response.iter_lines():
                meter.feed(line, time.perf_counter())
            stats = meter.finish(time.perf_counter())
            if stats.error:
                response.failure(stats.error)
                return
            response.success()
        _report(self.environment, "ttft", stats.ttft_s * 1000 if stats.ttft_s is not None else 0)
        if stats.mean_itl_s is not None:
            _report(self.environment, "itl", stats.mean_itl_s * 1000)
        _report(self.environment, "output_tokens", stats.output_tokens, stats.output_tokens)

    def complete(self, path: str, body: dict, name: str) -> None:
        with self.client.post(path, json=body, headers=self.headers, name=name, catch_response=True) as response:
            if self._rejected(response):
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            tokens = (response.json().get("usage") or {}).get("completion_tokens", 0)
            response.success()
        _report(self.environment, "output_tokens", tokens, tokens)


class StreamingChatUser(OpenAIUser):
    weight = 4

    @task
    def chat_stream(self) -> None:
        body = {"model": self.options.model, "messages": [{"role": "user", "content": self.prompt}], **self._sampling()}
        self.stream("/v1/chat/completions", body, "/v1/chat/completions [stream]")


class ChatUser(OpenAIUser):
    weight = 2

    @task
    def chat(self) -> None:
        body = {"model": self.options.model, "messages": [{"role": "user", "content": self.prompt}], **self._sampling()}
        self.complete("/v1/chat/completions", body, "/v1/chat/completions")


class CompletionUser(OpenAIUser):
    weight = 1

    @task
    def completion(self) -> None:
        self.stream(
            "/v1/completions",
            {"model": self.options.model, "prompt": self.prompt, **self._sampling()},
            "/v1/completions [stream]",
        )


class VisionUser(OpenAIUser):
    """Sends a small PNG with each request; stops itself when the server has no vision model."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        if self.options.vision_model not in self._served_models():
            raise StopUser()
        self.image = _tiny_png()

    @task
    def vision_chat(self) -> None:
        content = [
            {"type": "text", "text": "Describe the image."},
            {"type": "image_url", "image_url": {"url": self.image}},
        ]
        body = {
            "model": self.options.vision_model,
            "messages": [{"role": "user", "content": content}],
            **self._sampling(),
        }
        self.stream("/v1/chat/completions", body, "/v1/chat/completions [vision stream]")


class MixedModelUser(OpenAIUser):
    """Streams chats across several catalog models, weighted (--models 'default:3,moe:1')."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        served = self._served_models()
        self.mix = [(name, weight) for name, weight in parse_model_mix(self.options.models) if name in served]
        if not self.mix:
            raise StopUser()

    @task
    def mixed_chat(self) -> None:
        names, weights = zip(*self.mix, strict=True)
        model = random.choices(names, weights=weights)[0]
        body = {"model": model, "messages": [{"role": "user", "content": self.prompt}], **self._sampling()}
        self.stream("/v1/chat/completions", body, f"/v1/chat/completions [stream {model}]")
