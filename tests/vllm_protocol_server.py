"""A server that speaks vLLM's OpenAI-compatible HTTP protocol, backed by the embedded engine.

vLLM needs a GPU, so tests of the vLLM backend run against this instead. It follows what
vLLM documents and does (vllm/entrypoints/openai): `/v1/chat/completions` (JSON and SSE,
`stream_options.include_usage`, a final usage chunk with no choices, `data: [DONE]`),
`/v1/models` with `max_model_len`, `/tokenize` at the server root (chat and prompt
forms, answering `count`, `max_model_len`, `tokens`), `/health`, runtime LoRA
(`/v1/load_lora_adapter` with `load_inplace`, `/v1/unload_lora_adapter`: the adapter is
really loaded into the engine and served under its name; `/v1/models` lists it with
`root` = its path and `parent` = the base model; 400 for a duplicate name, 404 for a path
with no adapter, 500 for a rank above `--max-lora-rank`), and errors as
`{"error": {"message", "type", "param", "code"}}`.

It is stricter than vLLM in one way on purpose: a request field vLLM does not define is a
400 here (vLLM would log and ignore it), so the client cannot drift from the real API.

Faults for tests: `POST /_test/faults {"delay": seconds, "status": code, "no_tokenize": true}`
makes chat completions wait, or answer with that error status, or /tokenize vanish, until
the next call resets them. `POST /_test/restart` drops every loaded adapter, as a vLLM
restart does; `GET /_test/lora_calls` lists the LoRA request bodies received.

    python tests/vllm_protocol_server.py --port 8001 --served-model-name NAME
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(Strict):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class ChatCompletionRequest(Strict):
    # The OpenAI fields vLLM implements, plus vLLM's documented sampling extras.
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: int | None = None
    min_tokens: int = 0
    repetition_penalty: float | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    skip_special_tokens: bool = True

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return self


class TokenizeChatRequest(Strict):
    model: str | None = None
    messages: list[Message]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False


class TokenizeCompletionRequest(Strict):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class LoadLoRAAdapterRequest(Strict):
    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(Strict):
    lora_name: str
    lora_int_id: int | None = None


def error(message: str, status: int, type_: str = "BadRequestError", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}}, status_code=status)


def invalid_body(exc: ValidationError) -> JSONResponse:
    """As vLLM answers a body its request model refuses: 400, the field as `body.<name>`."""
    first = exc.errors()[0]
    return error(f"1 validation error: {first['msg']}", 400, "Bad Request", "body." + ".".join(map(str, first["loc"])))


def create_app(generator, served_model: str, max_model_len: int, max_lora_rank: int = 64) -> FastAPI:
    from service.generation.base import GenerationParams

    app = FastAPI()
    no_faults = {"delay": 0.0, "status": None, "no_tokenize": False}
    faults: dict = dict(no_faults)
    adapters: dict[str, str] = {}  # name -> lora_path, as vLLM's lora_requests
    lora_calls: list[dict] = []  # the raw bodies of load/unload requests, for tests to inspect

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(str(exc.errors()[0].get("msg")) + f" ({'.'.join(map(str, exc.errors()[0]['loc']))})", 400)

    def known(model: str | None) -> str | None:
        if model in (None, served_model) or model in adapters:
            return None
        return f"The model `{model}` does not exist."

    def text_of(message: Message) -> str:
        if isinstance(message.content, list):
            return "".join(p.get("text", "") for p in message.content if p.get("type") == "text")
        return message.content or ""

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/v1/models")
    async def models() -> dict:
        cards = [{"id": served_model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                  "root": served_model, "parent": None, "max_model_len": max_model_len}]
        cards += [{"id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": path,
                   "parent": served_model, "max_model_len": None} for name, path in adapters.items()]
        return {"object": "list", "data": cards}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        if faults["no_tokenize"]:  # as a server without the endpoint answers
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        raw = await request.json()
        try:
            body = TokenizeChatRequest(**raw) if "messages" in raw else TokenizeCompletionRequest(**raw)
        except ValueError as exc:
            return error(str(exc), 400)
        if (problem := known(body.model)) is not None:
            return error(problem, 404, "NotFoundError", "model")
        tokenizer = generator.tokenizer
        if isinstance(body, TokenizeChatRequest):
            chat = [{"role": m.role, "content": text_of(m)} for m in body.messages]
            ids = tokenizer.apply_chat_template(
                chat, add_generation_prompt=body.add_generation_prompt, tokenize=True, return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
        return {"count": len(ids), "max_model_len": max_model_len, "tokens": list(ids), "token_strs": None}

    async def engine_serves(wanted: dict[str, str]) -> str | None:
        """The embedded engine holds exactly `wanted`; the failure message if one did not load."""
        report = await generator.sync_adapters({name: Path(path) for name, path in wanted.items()})
        return next(iter(report.failed.values()), None)

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request):
        raw = await request.json()
        lora_calls.append({"action": "load", "body": raw})
        try:
            body = LoadLoRAAdapterRequest(**raw)
        except ValidationError as exc:
            return invalid_body(exc)
        if not body.lora_name or not body.lora_path:
            return error("Both 'lora_name' and 'lora_path' must be provided.", 400, "InvalidUserInput")
        if body.lora_name in adapters and not body.load_inplace:
            return error(f"The lora adapter '{body.lora_name}' has already been loaded.", 400, "InvalidUserInput")
        config_path = Path(body.lora_path) / "adapter_config.json"
        if not config_path.is_file():
            return error(f"Loading lora {body.lora_name} failed: No adapter found for {body.lora_path}", 404, "NotFoundError")
        rank = json.loads(config_path.read_text()).get("r", 0)
        if rank > max_lora_rank:
            # As DESIGN.md documents: other load failures are a 500 (some vLLM releases answer 400).
            return error(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.", 500, "InternalServerError")
        problem = await engine_serves({**adapters, body.lora_name: body.lora_path})
        if problem is not None:
            await engine_serves(adapters)
            return error(f"Loading lora {body.lora_name} failed: {problem}", 500, "InternalServerError")
        adapters[body.lora_name] = body.lora_path
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request):
        raw = await request.json()
        lora_calls.append({"action": "unload", "body": raw})
        try:
            body = UnloadLoRAAdapterRequest(**raw)
        except ValidationError as exc:
            return invalid_body(exc)
        if adapters.pop(body.lora_name, None) is None:
            return error(f"The lora adapter '{body.lora_name}' cannot be found.", 404, "NotFoundError")
        await engine_serves(adapters)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.get("/_test/lora_calls")
    async def get_lora_calls() -> list:
        return lora_calls

    @app.post("/_test/restart")
    async def restart() -> dict:
        """What a vLLM restart does to runtime-loaded adapters: they are gone."""
        adapters.clear()
        await engine_serves({})
        return {"adapters": []}

    @app.post("/_test/faults")
    async def set_faults(request: Request) -> dict:
        faults.update(no_faults | await request.json())
        return faults

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest):
        if faults["delay"]:
            await asyncio.sleep(float(faults["delay"]))
        if faults["status"]:
            return error("injected failure", int(faults["status"]), "InternalServerError")
        if (problem := known(body.model)) is not None:
            return error(problem, 404, "NotFoundError", "model")
        if body.n not in (None, 1):
            return error("n > 1 is not supported by this test server", 400)
        messages = [{"role": m.role, "content": text_of(m)} for m in body.messages]
        prompt_tokens = generator.count_chat_tokens(messages)
        max_tokens = body.max_completion_tokens or body.max_tokens or max(1, max_model_len - prompt_tokens)
        if prompt_tokens + max_tokens > max_model_len:
            return error(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.", 400,
            )
        stops = tuple([body.stop] if isinstance(body.stop, str) else body.stop or ())
        params = GenerationParams(
            max_tokens=max_tokens, temperature=body.temperature if body.temperature is not None else 1.0,
            top_p=body.top_p or 1.0, stop=stops, seed=body.seed, model=body.model if body.model in adapters else None,
            frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
            repetition_penalty=body.repetition_penalty or 1.0,
        )
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model or served_model
        if not body.stream:
            done = await generator.generate(messages, params)
            return {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "logprobs": None, "finish_reason": done.finish_reason, "stop_reason": None}],
                "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                          "total_tokens": done.prompt_tokens + done.completion_tokens},
            }
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
            data: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                    "choices": [] if delta is None else
                                    [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for event in generator.stream(messages, params):
                    if event.done:
                        done = event.completion
                        yield chunk({"content": ""}, finish=done.finish_reason)
                        if include_usage:
                            yield chunk(None, usage={"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                                                     "total_tokens": done.prompt_tokens + done.completion_tokens})
                    else:
                        yield chunk({"content": event.text})
            except Exception as exc:  # vLLM sends the error as an event, then [DONE]
                yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'InternalServerError', 'param': None, 'code': 500}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    import uvicorn

    from ragtune.settings import get_settings
    from service.generation.local import LocalGenerator

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-lora-rank", type=int, default=64)
    args = parser.parse_args()
    generator = LocalGenerator(get_settings().generation)
    app = create_app(generator, args.served_model_name, args.max_model_len, args.max_lora_rank)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
