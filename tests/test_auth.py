"""Client API keys: the API asks for one when keys are set; production refuses to run open."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.helpers import Server, free_port, ragtune_cmd, ragtune_env, run_ragtune

pytestmark = pytest.mark.slow
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_production_refuses_to_start_without_client_keys(squad_index):
    done = run_ragtune("serve", "--index-dir", str(squad_index), "--port", str(free_port()),
                       RAGTUNE_SERVICE__ENVIRONMENT="production", timeout=120)
    assert done.returncode == 2
    assert "RAGTUNE_SERVICE__API_KEYS" in done.stderr and "Traceback" not in done.stderr


def test_the_api_asks_for_a_key_when_keys_are_set(tmp_path, squad_index):
    port = free_port()
    env = ragtune_env(RAGTUNE_SERVICE__API_KEYS=json.dumps(["key-one", "key-two"]), RAGTUNE_SERVICE__ENVIRONMENT="production")
    with Server(ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port)), port, tmp_path / "s.log", env) as served:
        url = served.start("/ready").url  # health and readiness stay open, for probes
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="key-two", max_retries=0)
        assert [m.id for m in good.models.list()] == [BASE_MODEL, "sentence-transformers/all-MiniLM-L6-v2"]
        with pytest.raises(openai.AuthenticationError) as denied:
            openai.OpenAI(base_url=f"{url}/v1", api_key="key-three", max_retries=0).models.list()
        assert denied.value.status_code == 401 and "API key" in denied.value.body["message"]
        no_key = httpx.post(f"{url}/ask", json={"question": "Who ruled Normandy?"})
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/metrics").status_code == 200
