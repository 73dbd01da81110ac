"""Structured output on the embedded engine: OpenAI's `response_format` (json_object, or
json_schema) enforced token by token with xgrammar, so the answer is valid JSON matching the
schema (it can still end early at max_tokens, with finish_reason "length", as with OpenAI)."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict

from ragtune.errors import UsageError


def check_response_format(value: dict) -> dict | None:
    """The JSON schema asked for ({} for any JSON object), or None for plain text; UsageError
    naming what is wrong with the field."""
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise UsageError("response_format: use {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": "
                         "{\"name\": ..., \"schema\": {...}}}", param="response_format")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return {}
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema", {}), dict):
        raise UsageError("response_format.json_schema: needs a name and a schema object", param="response_format.json_schema")
    schema = spec.get("schema", {})
    problem = _schema_problem(json.dumps(schema or {"type": "object"}, sort_keys=True))
    if problem:
        raise UsageError(f"response_format.json_schema.schema: the schema cannot be enforced: {problem}",
                         param="response_format.json_schema.schema")
    return schema


_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # xgrammar's "[13:30:15] /project/cpp/x.cc:94: "


def _schema_problem(schema: str) -> str | None:
    """Why xgrammar cannot turn this schema into a grammar (None: it can): the step both engines run,
    transformers through xgrammar here, OpenVINO GenAI through its own copy of it, which would fail
    mid-request instead."""
    import xgrammar as xgr

    try:
        xgr.Grammar.from_json_schema(schema, any_whitespace=False)
    except Exception as exc:  # xgrammar raises RuntimeError with its C++ log line
        return _LOG_PREFIX.sub("", str(exc).strip().splitlines()[0])[:300] or type(exc).__name__
    return None


class JsonConstraints:
    """Compiled grammars by schema (a few kept), and a fresh token mask per generation."""

    def __init__(self, tokenizer, vocab_size: int, keep: int = 32):
        self._tokenizer, self._vocab_size, self._keep = tokenizer, vocab_size, keep
        self._compiler = None
        self._compiled: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def processor(self, schema: dict):
        """A transformers logits processor that allows only JSON matching `schema` ({}: any object)."""
        import xgrammar as xgr
        from xgrammar.contrib.hf import LogitsProcessor

        key = json.dumps(schema or {"type": "object"}, sort_keys=True)
        with self._lock:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size)
                self._compiler = xgr.GrammarCompiler(info)
            grammar = self._compiled.get(key)
            if grammar is None:
                try:  # no free whitespace: small models fill a JSON gap with it until max_tokens
                    grammar = self._compiler.compile_json_schema(key, any_whitespace=False)
                except Exception as exc:  # xgrammar's own error for a schema it cannot enforce
                    raise UsageError(f"response_format: the schema cannot be enforced: {exc}", param="response_format") from None
                self._compiled[key] = grammar
                while len(self._compiled) > self._keep:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(key)
        return LogitsProcessor(grammar)
