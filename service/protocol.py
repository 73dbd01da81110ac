"""What clients send: OpenAI's chat completion request and ragtune's /ask, as pydantic models
(answers: service/responses.py). Fields outside OpenAI's spec are marked "ragtune extension";
requests turn themselves into backend parameters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragtune.settings import GenerationSettings
from service.generation.base import STRUCTURED_FIELDS, GenerationParams
from service.schema import STRICT, RetrievalOptions


INT64 = 2**63  # seeds are 64-bit signed integers, as vLLM and torch take them
# The engines compute in float32, where a smaller top_p or repetition penalty is 0 (which they refuse) or
# scales logits past float32's range.
SMALLEST_FACTOR = 1e-6


class SamplingFields(BaseModel):
    model_config = STRICT
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=SMALLEST_FACTOR, le=1)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="Subtracted from a token's logit per time it is already in the answer "
        "(default: the setting generation.frequency_penalty).",
    )
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="Subtracted once from a token's logit if it is already in the answer.",
    )
    repetition_penalty: float | None = Field(
        None, ge=SMALLEST_FACTOR, le=2, description="ragtune and vLLM extension: above 1 discourages tokens of the prompt and the "
        "answer alike (default: the setting generation.repetition_penalty).",
    )

    def params(
        self, defaults: GenerationSettings, model: str | None, max_tokens: int | None = None, default_max: int | None = None,
    ) -> GenerationParams:
        """The backend's parameters: the request's, else the settings' defaults (the default frequency penalty is
        for prose: JSON and tool calls repeat their quotes and braces by design, so they go without it)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        structured = any(not neutral(v) for k, v in (self.model_extra or {}).items() if k in STRUCTURED_FIELDS)
        frequency = 0.0 if structured else defaults.frequency_penalty
        return GenerationParams(
            max_tokens=max_tokens or self.max_tokens or default_max or defaults.max_answer_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            default_stop=self.stop is None,
            seed=self.seed,
            repetition_penalty=defaults.repetition_penalty if self.repetition_penalty is None else self.repetition_penalty,
            frequency_penalty=frequency if self.frequency_penalty is None else self.frequency_penalty,
            presence_penalty=self.presence_penalty or 0.0,
            model=model,
        )


# -- /ask ---------------------------------------------------------------------------------
class AskRequest(SamplingFields):
    question: str = Field(min_length=1, description="The question to answer from the index.")
    top_k: int | None = Field(None, ge=1, le=100)
    min_score: float | None = Field(None, ge=-1, le=1)
    filters: RetrievalOptions | None = None
    collection: str | None = Field(None, description="The collection to search (default: `default`).")
    model: str | None = Field(None, description="The base model or an adapter name.")
    stream: bool = False


# -- /v1/chat/completions -------------------------------------------------------------------
class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"] = Field(description="Only text parts: the models served here read text.")
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, description="An assistant's earlier tool calls (vLLM backend).")
    tool_call_id: str | None = Field(None, description="The call a tool message answers (vLLM backend).")

    def turn(self) -> dict:
        """The message as the backend gets it: text content, tool fields only where present."""
        message: dict = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


# OpenAI chat fields each backend honours: vLLM gets them as they are (its answer comes back
# unchanged in shape); the embedded engine enforces response_format itself.
HONOURED_FIELDS = {
    "vllm": ("tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "logit_bias"),
    "local": ("response_format", "logprobs", "top_logprobs"),
}
# OpenAI chat fields a backend may not honour. A request may send them with a value that asks
# for nothing (null, false, 0, empty, a plain-text response format); any other value is refused
# by name, never ignored (HONOURED_FIELDS are, by their backend).
UNSUPPORTED_CHAT_FIELDS = (
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "response_format", "logprobs",
    "top_logprobs", "logit_bias", "audio", "modalities", "prediction",
    "web_search_options", "reasoning_effort", "service_tier", "store", "metadata",
)
_NEUTRAL = (None, False, 0, "", [], {}, {"type": "text"}, "none")


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(extra="allow", strict=True)  # extras are sorted out by `refused_fields`
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=8, description="Choices to generate: more than 1 on the vLLM backend only.")
    user: str | None = None
    retrieval: RetrievalOptions | None = Field(None, description="ragtune extension")

    def refused_fields(self, honoured: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """(OpenAI fields sent with a value the backend does not honour, fields OpenAI does not know)."""
        extra = self.model_extra or {}
        unsupported = [k for k in UNSUPPORTED_CHAT_FIELDS if k in extra and not neutral(extra[k]) and k not in honoured]
        unknown = [k for k in extra if k not in UNSUPPORTED_CHAT_FIELDS]
        return unsupported, unknown

    def passthrough(self, honoured: tuple[str, ...]) -> dict:
        """What goes to the backend as it is: the honoured OpenAI fields that ask for something, and n."""
        extra = {k: v for k, v in (self.model_extra or {}).items() if k in honoured and not neutral(v)}
        return {**extra, "n": self.n} if self.n > 1 else extra


def neutral(value: Any) -> bool:
    """A value that asks for nothing: null, false, 0, empty, a plain-text format."""
    return any(type(value) is type(n) and value == n for n in _NEUTRAL)
