"""Per-request limits: what one client may make the service hold in memory or spend in time.

Each limit is a setting (`service.*`, documented there); a request over one is a 400 that
names the field, the limit and the setting. The schema catches wrong types and ranges first
(protocol.py); these are the bounds a deployment may want to move.
"""

from __future__ import annotations

from ragtune.errors import UsageError
from ragtune.settings import ServiceSettings
from service.generation.structured import check_response_format
from service.protocol import HONOURED_FIELDS, AskRequest, ChatCompletionRequest, RetrievalOptions, SamplingFields


def _over(param: str, what: str, limit: int, setting: str) -> UsageError:
    return UsageError(f"{param}: {what}; the limit is {limit} (setting service.{setting})", param=param)


def check_question(text: str, limits: ServiceSettings, param: str = "question") -> None:
    if not text.strip():
        raise UsageError("the question is empty; send some text", param=param)
    if len(text) > limits.max_question_chars:
        raise _over(param, f"{len(text)} characters", limits.max_question_chars, "max_question_chars")


def retrieval_options(
    sent: RetrievalOptions | None, question: str, system: str | None, limits: ServiceSettings, param: str,
) -> RetrievalOptions:
    """What retrieval a chat or completions request gets. A request that names none and whose question or
    system message is longer than any question (service.max_question_chars) carries its own context (a
    LangChain or LlamaIndex chain that has retrieved already): it gets no retrieval on top, and the
    window and service.max_message_chars bound it. Otherwise retrieval is on and the question is a
    question (check_question)."""
    own_context = sent is None and max(len(question), len(system or "")) > limits.max_question_chars
    options = RetrievalOptions(enabled=False) if own_context else sent or RetrievalOptions()
    if options.enabled or not question.strip():
        check_question(question, limits, param)
    return options


def _check_stop(body: SamplingFields, limits: ServiceSettings) -> None:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    if len(stops) > limits.max_stop_sequences:
        raise _over("stop", f"{len(stops)} stop strings", limits.max_stop_sequences, "max_stop_sequences")
    for stop in stops:
        if len(stop) > limits.max_stop_chars:
            raise _over("stop", f"a stop string of {len(stop)} characters", limits.max_stop_chars, "max_stop_chars")
        if not stop:
            raise UsageError("stop: an empty stop string would end every answer before it starts", param="stop")


def _check_retrieval(options: RetrievalOptions | None, top_k: int | None, limits: ServiceSettings, where: str) -> None:
    for param, k in ((f"{where}.top_k", options.top_k if options else None), ("top_k", top_k)):
        if k is not None and k > limits.max_top_k:
            raise _over(param, f"top_k {k}", limits.max_top_k, "max_top_k")
    if options is None:
        return
    if len(options.doc_ids) > limits.max_filter_values:
        raise _over(f"{where}.doc_ids", f"{len(options.doc_ids)} document ids", limits.max_filter_values, "max_filter_values")
    if len(options.metadata) > limits.max_filter_values:
        raise _over(f"{where}.metadata", f"{len(options.metadata)} keys", limits.max_filter_values, "max_filter_values")


def check_sampling(body: SamplingFields, options: RetrievalOptions | None, limits: ServiceSettings) -> None:
    """Stop strings and retrieval options of any request that has them (the completions endpoint)."""
    _check_stop(body, limits)
    _check_retrieval(options, None, limits, "retrieval")


def check_ask(body: AskRequest, limits: ServiceSettings) -> None:
    check_question(body.question, limits)
    _check_stop(body, limits)
    _check_retrieval(body.filters, body.top_k, limits, "filters")


def check_chat(body: ChatCompletionRequest, limits: ServiceSettings, backend: str) -> None:
    passthrough = backend == "vllm"  # vLLM honours tools, response_format, logprobs, penalties, n...
    unsupported, unknown = body.refused_fields(HONOURED_FIELDS[backend])
    if unsupported:
        raise UsageError(
            f"{unsupported[0]}: not supported by ragtune's chat endpoint on the {backend} backend; leave it out",
            param=unsupported[0],
        )
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown field (extra inputs are not permitted)", param=unknown[0])
    if len(body.messages) > limits.max_messages:
        raise _over("messages", f"{len(body.messages)} messages", limits.max_messages, "max_messages")
    if body.n > 1 and not passthrough:
        raise UsageError(f"n: the {backend} backend generates one choice; leave n out or set it to 1", param="n")
    for i, message in enumerate(body.messages):
        if (message.role == "tool" or message.tool_calls) and not passthrough:
            raise UsageError(
                f"messages[{i}]: tool messages and tool calls need tool calling, which the {backend} backend does "
                "not do here", param=f"messages[{i}].role",
            )
        if len(message.text()) > limits.max_message_chars:
            raise _over(f"messages[{i}].content", f"{len(message.text())} characters", limits.max_message_chars,
                        "max_message_chars")
    _check_stop(body, limits)
    _check_retrieval(body.retrieval, None, limits, "retrieval")
    extra = body.model_extra or {}
    if backend == "local" and "response_format" in extra:
        check_response_format(extra["response_format"])  # its shape, before any answer starts
    top = extra.get("top_logprobs")
    if top is not None and (type(top) is not int or not 0 <= top <= 20):
        raise UsageError("top_logprobs: an integer from 0 to 20", param="top_logprobs")
    if "logprobs" in extra and type(extra["logprobs"]) is not bool and extra["logprobs"] is not None:
        raise UsageError("logprobs: true or false", param="logprobs")
    if top and not extra.get("logprobs"):
        raise UsageError("top_logprobs: needs logprobs: true", param="top_logprobs")
    if backend == "local" and extra.get("logprobs") and body.stream:
        raise UsageError("logprobs: the local backend gives them without stream only; leave one out", param="logprobs")
