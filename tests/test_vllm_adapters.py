"""Publishing adapters to vLLM replicas: the runtime LoRA requests vLLM expects, reconcile after
a replica restarts, and vLLM's refusals surfaced. Two vLLM-protocol servers (each backed by
the embedded engine, which really serves the adapter), the ragtune service in front, and
the official openai client in front of that."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Server, free_port, ragtune_cmd, ragtune_env

pytestmark = pytest.mark.slow
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADMIN_KEY = "test-admin-key"


def replica(port: int, log: Path, max_lora_rank: int = 64) -> Server:
    cmd = [sys.executable, str(Path(__file__).with_name("vllm_protocol_server.py")), "--port", str(port),
           "--max-lora-rank", str(max_lora_rank)]
    return Server(cmd, port, log)


def lora_calls(server: Server) -> list[dict]:
    return httpx.get(f"{server.url}/_test/lora_calls").json()


def served_adapters(server: Server) -> dict[str, str]:
    cards = httpx.get(f"{server.url}/v1/models").json()["data"]
    return {c["id"]: c["root"] for c in cards if c["parent"]}


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    logs = tmp_path_factory.mktemp("replicas")
    with replica(free_port(), logs / "a.log") as a, replica(free_port(), logs / "b.log") as b:
        yield a.start("/health"), b.start("/health")


def admin(service: str, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{service}/admin{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120)


def test_publishing_reaches_every_replica_and_survives_a_restart(tmp_path, replicas, registry_copy, squad_index, squad):
    from ragtune.registry import Registry
    from ragtune.settings import AdapterSettings

    a, b = replicas
    port = free_port()
    env = ragtune_env(
        RAGTUNE_GENERATION__BACKEND="vllm", RAGTUNE_GENERATION__VLLM__URLS=json.dumps([f"{a.url}/v1", f"{b.url}/v1"]),
        RAGTUNE_ADAPTERS__DIR=str(registry_copy), RAGTUNE_ADAPTERS__SYNC_SECONDS="0.5", RAGTUNE_SERVICE__ADMIN_API_KEY=ADMIN_KEY,
    )
    with Server(ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port)), port, tmp_path / "s.log", env) as served:
        service = served.start("/ready").url
        client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0)
        question = squad["data"][1]["paragraphs"][0]["qas"][0]["question"]
        registry = Registry(AdapterSettings(dir=registry_copy), BASE_MODEL)
        path = str(registry.get("pirate").path)

        loaded = admin(service, "POST", "/adapters/pirate/load")
        assert loaded.status_code == 200, loaded.text
        for server in (a, b):  # exactly the body vLLM's LoadLoRAAdapterRequest takes
            assert lora_calls(server) == [{"action": "load", "body": {"lora_name": "pirate", "lora_path": path}}]
            assert served_adapters(server) == {"pirate": path}
        assert [m.id for m in client.models.list() if m.kind == "generation"] == [BASE_MODEL, "pirate"]

        def ask(model: str) -> str:
            return client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], max_tokens=24,
                extra_body={"retrieval": {"enabled": False}},
            ).choices[0].message.content

        assert all("matey" in ask("pirate") for _ in range(2))  # round robin: both replicas answer as trained
        assert "matey" not in ask(BASE_MODEL)

        # Replica b restarts and loses its adapters: the service puts back what the registry publishes.
        httpx.post(f"{b.url}/_test/restart").raise_for_status()
        wait_for(lambda: served_adapters(b) == {"pirate": path}, "replica b was not reconciled after its restart")
        assert lora_calls(b)[-1] == {"action": "load", "body": {"lora_name": "pirate", "lora_path": path}}
        assert len(lora_calls(a)) == 1  # the healthy replica is left alone

        # A new version under the same name: replaced in place on every replica.
        newer = str(registry.add("pirate", Path(path)).path)
        assert newer != path
        for server in (a, b):
            wait_for(lambda: served_adapters(server) == {"pirate": newer}, "the new version did not reach a replica")
            assert lora_calls(server)[-1] == {
                "action": "load", "body": {"lora_name": "pirate", "lora_path": newer, "load_inplace": True}}

        unloaded = admin(service, "POST", "/adapters/pirate/unload")
        assert unloaded.status_code == 200
        for server in (a, b):
            assert lora_calls(server)[-1] == {"action": "unload", "body": {"lora_name": "pirate"}}
            assert served_adapters(server) == {}
        with pytest.raises(openai.NotFoundError) as gone:
            ask("pirate")
        assert gone.value.body["param"] == "model"


def test_vllm_refusals_are_surfaced_and_nothing_stays_published(tmp_path, registry_copy, squad_index):
    """A replica whose --max-lora-rank is below the adapter's rank answers 500; the admin call
    says so (502, with vLLM's message) and the adapter stays unpublished."""
    from ragtune.registry import Registry
    from ragtune.settings import AdapterSettings

    with replica(free_port(), tmp_path / "small.log", max_lora_rank=8) as small:
        small.start("/health")
        port = free_port()
        env = ragtune_env(
            RAGTUNE_GENERATION__BACKEND="vllm", RAGTUNE_GENERATION__VLLM__URLS=json.dumps([f"{small.url}/v1"]),
            RAGTUNE_ADAPTERS__DIR=str(registry_copy), RAGTUNE_SERVICE__ADMIN_API_KEY=ADMIN_KEY,
        )
        with Server(ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port)), port, tmp_path / "s.log", env) as served:
            service = served.start("/ready").url
            refused = admin(service, "POST", "/adapters/pirate/load")
            assert refused.status_code == 502
            message = refused.json()["error"]["message"]
            assert "stays unpublished" in message and "500" in message and "max_lora_rank 8" in message
            assert Registry(AdapterSettings(dir=registry_copy), BASE_MODEL).published() == {}
            assert served_adapters(small) == {}


def test_the_test_server_answers_loras_errors_as_vllm_documents(replicas, pirate_registry):
    """400 for a name already loaded (without load_inplace), 404 for a path with no adapter."""
    a, _ = replicas
    (path,) = [p for p in (pirate_registry / "pirate").iterdir() if not p.name.startswith(".")]
    body = {"lora_name": "probe", "lora_path": str(path)}
    assert httpx.post(f"{a.url}/v1/load_lora_adapter", json=body, timeout=60).status_code == 200
    duplicate = httpx.post(f"{a.url}/v1/load_lora_adapter", json=body)
    assert duplicate.status_code == 400 and "already been loaded" in duplicate.json()["error"]["message"]
    missing = httpx.post(f"{a.url}/v1/load_lora_adapter", json={"lora_name": "ghost", "lora_path": "/nowhere"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"
    assert httpx.post(f"{a.url}/v1/unload_lora_adapter", json={"lora_name": "probe"}).status_code == 200
    assert httpx.post(f"{a.url}/v1/unload_lora_adapter", json={"lora_name": "probe"}).status_code == 404


def test_a_path_vllm_cannot_see_is_explained(replicas):
    import asyncio

    from ragtune.settings import GenerationSettings, VllmSettings
    from service.generation.vllm import VllmGenerator

    a, _ = replicas
    generator = VllmGenerator(GenerationSettings(backend="vllm", vllm=VllmSettings(urls=[a.url], tokenizer="tiktoken")))

    async def sync():
        try:
            return await generator.sync_adapters({"ghost": Path("/not/mounted/in/vllm")})
        finally:
            await generator.close()

    report = asyncio.run(sync())
    (problem,) = report.failed.values()
    assert "404" in problem and "mount the adapters volume at the same path" in problem
    assert generator.models() == [BASE_MODEL]


def test_discovery_finds_every_address_of_a_name_and_reconciles_each(replicas, registry_copy):
    """`generation.vllm.discover`: a name (here `localhost`, as a headless Service would be in
    Kubernetes) stands for every address it resolves to; each one is a replica."""
    import asyncio
    import socket

    from ragtune.registry import Registry
    from ragtune.settings import AdapterSettings, GenerationSettings, VllmSettings
    from service.generation.vllm import VllmGenerator

    a, _ = replicas
    port = a.url.rsplit(":", 1)[1]
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", int(port), type=socket.SOCK_STREAM)}
    assert "127.0.0.1" in addresses
    path = Registry(AdapterSettings(dir=registry_copy), BASE_MODEL).get("pirate").path
    generator = VllmGenerator(GenerationSettings(
        backend="vllm", vllm=VllmSettings(urls=[f"http://localhost:{port}/v1"], discover=True, tokenizer="tiktoken")))

    async def sync(desired):
        return await generator.sync_adapters(desired)

    async def run():
        try:
            report = await sync({"scout": path})
            unloaded = await sync({})
            return report, unloaded
        finally:
            await generator.close()

    report, unloaded = asyncio.run(run())
    expected = sorted(f"http://{f'[{a_}]' if ':' in a_ else a_}:{port}" for a_ in addresses)
    assert sorted(generator.replicas.roots) == expected  # one replica per address, the name itself gone
    assert f"http://127.0.0.1:{port} scout" in report.loaded
    assert f"http://127.0.0.1:{port} scout" in unloaded.unloaded
    assert generator.models() == [BASE_MODEL]
