"""The instance of instance.py, started once for the whole package and stopped after its last test,
and the OTLP receiver its traces go to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services import runtime
from testkit.serving import ServerProcess, catalog_variant, serving

from .instance import KEYS, the_instance
from .otlp import Receiver, start_receiver


@pytest.fixture(scope="package")
def receiver() -> Iterator[Receiver]:
    server = start_receiver(runtime.free_ports(1)[0])
    yield server
    server.shutdown()


@pytest.fixture(scope="package")
def server(receiver: Receiver) -> Iterator[ServerProcess]:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    keys = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
    with serving(catalog_variant("cpu", the_instance(endpoint)), api_keys=keys) as running:
        yield running
