"""Property-based fuzz of the whole HTTP API from its own OpenAPI document (schemathesis):
no generated request, valid or not, gets a 5xx. The service runs for real (uvicorn, the real
embedder and index); the backend is the fake one (it counts with the real tokenizer and answers
nothing), since what is fuzzed here is the HTTP layer, not generation."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.helpers import free_port

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def live_url(tmp_path_factory, squad_index, embedder):
    import uvicorn

    from ragtune.settings import GenerationSettings, get_settings
    from service.app import create_app
    from service.generation.local import LocalGenerator
    from service.generation.fake import FakeGenerator
    from service.server import bounded_http_protocol

    settings = get_settings(service={"admin_api_key": "admin-key"})
    settings.index.dir = squad_index
    settings.adapters.dir = tmp_path_factory.mktemp("adapters")
    real = LocalGenerator(GenerationSettings())
    app = create_app(settings, FakeGenerator(real.model_name, counter=real, reply=""), embedder)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", http=bounded_http_protocol(15)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_gets_a_5xx(live_url, mode):
    """Every operation in the document, with requests that follow the schema (positive) and that
    break it (negative); each answer is below 500, errors in OpenAI's shape, and the service lives."""
    api = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10
    seen: list[int] = []

    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(base_url=live_url, headers={**(case.headers or {}), **ADMIN}, timeout=30)
            seen.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
            if response.status_code >= 400 and "application/json" in str(response.headers.get("content-type")):
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text

        try:
            fuzz()
        except Unsatisfiable:  # nothing in this operation can be broken (no parameters, no body)
            assert mode == "negative", operation.label
    assert len(seen) > 5 * len(operations)
    assert httpx.get(f"{live_url}/health").status_code == 200
