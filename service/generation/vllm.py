"""The production backend: a client of vLLM's OpenAI-compatible server.

Requests are plain OpenAI chat completions with vLLM's documented extras only, so any
vLLM version that serves `/v1/chat/completions` accepts them. Prompts are counted with
the served model's own tokenizer through vLLM's `/tokenize` (it applies the chat
template, so the count is the one vLLM will see).

Failures never hang a request and never surface as a 500: a replica that cannot be
reached is skipped for the next one, and when none answers the request gets a 503; a
replica that stays silent past `read_timeout` gives a 504; an error answer from vLLM is
passed on with its status (4xx) or as a 502. Connections are pooled and re-opened, so
the service recovers on its own when vLLM comes back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import threading
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx

from ragtune.errors import BackendError, BackendTimeout, BackendUnavailable, UnknownModel, UsageError
from ragtune.settings import GenerationSettings
from service.generation.base import (
    AdapterSyncReport, Backend, Completion, GenerationParams, Messages, StreamEvent,
)
from service.generation.vllm_counting import choose_counter

log = logging.getLogger("ragtune.generation")


def server_root(url: str) -> str:
    """`http://host:8000/v1/` -> `http://host:8000`: /tokenize and /health live at the root."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _error_message(response: httpx.Response) -> str:
    """vLLM's error text: `{"error": {...}}` in current releases, flat `{"message": ...}` in older ones."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return json.dumps(body)[:500]


def raise_for_backend(response: httpx.Response, model: str) -> None:
    if response.status_code < 400:
        return
    message = _error_message(response)
    if response.status_code == 404 and "model" in message.lower():
        raise UnknownModel(f"vLLM does not serve model {model!r}: {message}")
    if response.status_code in (400, 422):
        raise UsageError(f"vLLM refused the request: {message}")
    if response.status_code in (401, 403):
        raise BackendError(f"vLLM refused our credentials ({response.status_code}); check generation.vllm.api_key")
    if response.status_code == 503:
        raise BackendUnavailable(f"vLLM is not ready: {message}")
    raise BackendError(f"vLLM answered {response.status_code}: {message}")


class _Replicas:
    """Round robin over the servers; the caller moves on when one cannot be reached.

    With `discover`, each configured URL's host is resolved to all its addresses, and each
    address is a replica: a Kubernetes headless Service answers with one per ready pod, so
    replicas added (or restarted) are found at the next `refresh()`. Plain-HTTP in-cluster
    traffic only: an address in the URL defeats TLS host-name checks.
    """

    def __init__(self, urls: list[str], discover: bool = False):
        if not urls:
            raise UsageError("generation.vllm.urls is empty; give at least one vLLM server URL")
        self.configured = [server_root(u) for u in urls]
        self.discover = discover
        self.roots = list(self.configured)
        self._next = itertools.cycle(range(len(self.roots)))
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Re-resolve the replicas (blocking DNS: call it off the event loop)."""
        if not self.discover:
            return
        roots: list[str] = []
        for root in self.configured:
            parts = urlsplit(root)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve vLLM replicas of %s: %s", root, exc)
                infos = []
            addresses = [info[4][0] for info in infos] or [parts.hostname]
            for address in addresses:
                host = f"[{address}]" if ":" in address else address
                url = urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))
                if url not in roots:
                    roots.append(url)
        with self._lock:
            if roots != self.roots:
                log.warning("vLLM replicas: %s", roots)
                self.roots = roots
                self._next = itertools.cycle(range(len(roots)))

    def order(self) -> list[str]:
        with self._lock:
            start, roots = next(self._next), self.roots
        return roots[start:] + roots[:start]


class VllmGenerator(Backend):
    def __init__(self, settings: GenerationSettings):
        config = settings.vllm
        self.model_name = settings.model
        self.answer_adapter = config.answer_adapter
        self.context_window = settings.context_window
        self.replicas = _Replicas(config.urls, config.discover)
        headers = {"Authorization": f"Bearer {config.api_key.get_secret_value()}"} if config.api_key else {}
        timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout, pool=config.connect_timeout)
        limits = httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=config.max_connections)
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)
        # Counting runs inside packing, on a worker thread: a blocking client is the right tool there.
        self._sync = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._read_timeout = config.read_timeout
        self._counter = choose_counter(config.tokenizer, self._tokenize)
        self._adapters: list[str] = []  # published adapters that at least one replica serves

    # -- token counting -----------------------------------------------------------------
    def _tokenize(self, body: dict) -> int | None:
        """vLLM's `/tokenize` count; None when the server has no such endpoint."""
        response = self.post_sync("/tokenize", {"model": self.model_name, **body})
        if response.status_code == 404 and "model" not in _error_message(response).lower():
            return None
        raise_for_backend(response, self.model_name)
        return int(response.json()["count"])

    def count_chat_tokens(self, messages: Messages) -> int:
        return self._counter.chat(messages)

    def count_text_tokens(self, texts: list[str]) -> list[int]:
        return self._counter.counts(texts) if texts else []

    def post_sync(self, path: str, body: dict) -> httpx.Response:
        """A blocking POST to the first replica that answers (for /tokenize)."""
        last: Exception | None = None
        for root in self.replicas.order():
            try:
                return self._sync.post(f"{root}{path}", json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                last = exc
            except httpx.TimeoutException as exc:
                raise BackendTimeout(f"vLLM at {root} did not answer {path} within {self._read_timeout:g} s") from exc
        raise BackendUnavailable(f"no vLLM server answers ({', '.join(self.replicas.roots)}): {last}")

    # -- generation -----------------------------------------------------------------------
    def _body(self, messages: Messages, params: GenerationParams, stream: bool) -> dict:
        # generation.vllm.answer_adapter answers from passages in prose when the request names no adapter, once
        # vLLM serves it (until then, the base model does); the answer still names the model the client asked for.
        answering = self.answer_adapter if params.grounded and self.answer_adapter in self._adapters else None
        body: dict = {
            "model": params.model or answering or self.model_name,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": stream,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.repetition_penalty != 1.0:  # vLLM's extension to OpenAI's request
            body["repetition_penalty"] = params.repetition_penalty
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if stream:
            body["stream_options"] = {"include_usage": True}
        return {**body, **params.extra}

    async def _send(self, body: dict, stream: bool) -> httpx.Response:
        """Send to the first replica that accepts the connection; the response is open when streaming."""
        last: Exception | None = None
        for root in self.replicas.order():
            request = self._client.build_request("POST", f"{root}/v1/chat/completions", json=body)
            try:
                return await self._client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                log.warning("vLLM at %s cannot be reached: %s", root, exc)
                last = exc
            except httpx.TimeoutException as exc:
                raise BackendTimeout(f"vLLM at {root} did not answer within {self._read_timeout:g} s") from exc
            except httpx.HTTPError as exc:
                raise BackendUnavailable(f"vLLM at {root} dropped the request: {exc}") from exc
        raise BackendUnavailable(f"no vLLM server answers ({', '.join(self.replicas.roots)}): {last}")

    async def generate(self, messages: Messages, params: GenerationParams) -> Completion:
        body = self._body(messages, params, stream=False)
        response = await self._send(body, stream=False)
        raise_for_backend(response, body["model"])
        data = response.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Completion(
            text=(choice["message"].get("content") or "").strip(),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=_finish(choice.get("finish_reason")),
            model=params.model or self.model_name,
            choices=data["choices"] if params.extra else None,
        )

    async def stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        body = self._body(messages, params, stream=True)
        response = await self._send(body, stream=True)
        try:
            if response.status_code >= 400:
                await response.aread()
                raise_for_backend(response, body["model"])
            finish, usage, started = "stop", {}, False
            async for data in _sse_data(response, self._read_timeout):
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk or chunk.get("object") == "error":
                    raise BackendError(f"vLLM failed mid-stream: {_error_text(chunk)}")
                usage = chunk.get("usage") or usage
                if params.extra:  # pass-through: vLLM's choices as they are (tool call deltas, logprobs, n > 1)
                    if chunk.get("choices"):
                        yield StreamEvent(choices=chunk["choices"])
                    finish = next((_finish(c["finish_reason"]) for c in chunk.get("choices") or () if c.get("finish_reason")), finish)
                    continue
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") or ""
                    if not started:  # the answer's leading whitespace, as generate() strips it
                        text = text.lstrip()
                    if text:
                        started = True
                        yield StreamEvent(text=text)
                    if choice.get("finish_reason"):
                        finish = _finish(choice["finish_reason"])
            completion = Completion(
                text="", prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)), finish_reason=finish,
                model=params.model or self.model_name,
            )
            yield StreamEvent(done=True, completion=completion)
        finally:
            await response.aclose()

    async def server_models(self) -> list[dict]:
        """`/v1/models` of the first replica that answers (base model and loaded adapters)."""
        last: Exception | None = None
        for root in self.replicas.order():
            try:
                response = await self._client.get(f"{root}/v1/models")
            except httpx.HTTPError as exc:
                last = exc
                continue
            raise_for_backend(response, self.model_name)
            return response.json().get("data", [])
        raise BackendUnavailable(f"no vLLM server answers ({', '.join(self.replicas.roots)}): {last}")

    async def ready(self) -> bool:
        """Ready when a replica serves our model; learns the served context length on the way."""
        try:
            cards = await self.server_models()
        except (BackendUnavailable, BackendError, BackendTimeout, UnknownModel, UsageError) as exc:
            log.warning("vLLM not ready: %s", exc)
            return False
        card = next((c for c in cards if c.get("id") == self.model_name), None)
        if card is None:
            log.warning("vLLM serves %s, not %r (generation.model)", [c.get("id") for c in cards], self.model_name)
            return False
        if isinstance(card.get("max_model_len"), int) and card["max_model_len"] < self.context_window:
            log.warning("vLLM serves %s with %d tokens of context; using that", self.model_name, card["max_model_len"])
            self.context_window = card["max_model_len"]
        return True

    def models(self) -> list[str]:
        return [self.model_name, *self._adapters]

    # -- adapters (vLLM's runtime LoRA API; needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) ---------
    async def sync_adapters(self, desired: dict[str, Path]) -> AdapterSyncReport:
        """Every replica is made to serve exactly `desired`. A replica's /v1/models lists the
        adapters it holds, each with `root` = the path it was loaded from, so one that restarted
        (and lost them) or holds an older version is found and corrected."""
        report = AdapterSyncReport()
        served = {name: 0 for name in desired}
        await asyncio.to_thread(self.replicas.refresh)  # new or replaced replicas are found here
        for root in self.replicas.roots:
            try:
                response = await self._client.get(f"{root}/v1/models")
                raise_for_backend(response, self.model_name)
                cards = response.json().get("data", [])
            except (httpx.HTTPError, BackendError, BackendUnavailable, UnknownModel, UsageError, ValueError) as exc:
                report.failed[root] = f"cannot list its models: {exc}"
                continue
            held = {c["id"]: c.get("root") for c in cards if c.get("parent") and c.get("id") != self.model_name}
            for name in [n for n in held if n not in desired]:
                await self._lora(root, "unload", {"lora_name": name}, report, name)
            for name, path in desired.items():
                if held.get(name) == str(path):
                    served[name] += 1
                    continue
                body = {"lora_name": name, "lora_path": str(path)}
                if name in held:
                    body["load_inplace"] = True  # a new version under the same name
                if await self._lora(root, "load", body, report, name):
                    served[name] += 1
        self._adapters = [name for name, count in served.items() if count]
        return report

    async def _lora(self, root: str, action: str, body: dict, report: AdapterSyncReport, name: str) -> bool:
        try:
            response = await self._client.post(f"{root}/v1/{action}_lora_adapter", json=body)
        except httpx.HTTPError as exc:
            report.failed[f"{root} {name}"] = f"{action} failed: {exc}"
            return False
        if response.status_code != 200:
            problem = f"{action} answered {response.status_code}: {_error_message(response)}"
            if action == "load" and response.status_code == 404:
                problem += " (vLLM cannot see that path: mount the adapters volume at the same path in vLLM)"
            report.failed[f"{root} {name}"] = problem
            log.error("vLLM %s: %s of adapter %s answered %d: %s", root, action, name, response.status_code, _error_message(response))
            return False
        (report.loaded if action == "load" else report.unloaded).append(f"{root} {name}")
        return True

    async def close(self) -> None:
        await self._client.aclose()
        self._sync.close()


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _error_text(chunk: dict) -> str:
    inner = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
    return str(inner.get("message") or chunk)


async def _sse_data(response: httpx.Response, read_timeout: float) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream; a silent stream ends in BackendTimeout."""
    try:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                yield line[len("data:"):].strip()
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"vLLM went silent mid-stream for more than {read_timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"vLLM dropped the stream: {exc}") from exc
