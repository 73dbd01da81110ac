"""Constrained decoding on the embedded engine: xgrammar (what `response_format` uses) against
lm-format-enforcer, and unconstrained generation as the floor, on the same prompts, model and
JSON schema. Prints figures; asserts nothing.

Per library: seconds per answer, generated tokens/s, and how many answers are JSON that matches
the schema. lm-format-enforcer is not a dependency: `pip install lm-format-enforcer` to include it.

    python bench/structured.py [--prompts 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SQUAD = REPO.parent / "shared" / "data" / "squad-v2-dev-5articles.json"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 60}, "sure": {"type": "boolean"}},
          "required": ["answer", "sure"], "additionalProperties": False}


def matches(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == {"answer", "sure"} and isinstance(value["answer"], str) \
        and len(value["answer"]) <= 60 and isinstance(value["sure"], bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch
    from transformers import LogitsProcessorList

    from ragtune.settings import GenerationSettings
    from service.generation.local import LocalGenerator

    engine = LocalGenerator(GenerationSettings())
    questions = [qa["question"] for a in json.loads(SQUAD.read_text())["data"] for p in a["paragraphs"][:2]
                 for qa in p["qas"][:1]][: args.prompts]
    instruction = 'Answer as JSON: {"answer": <a short answer>, "sure": <true or false>}.'
    inputs = [torch.tensor([engine.tokens.prompt_ids([{"role": "system", "content": instruction},
                                                      {"role": "user", "content": q}])]) for q in questions]

    ways = {"unconstrained": lambda: {}, "xgrammar": lambda: {"logits_processor": LogitsProcessorList([engine.json.processor(SCHEMA)])}}
    try:
        import transformers.tokenization_utils_base as base

        # lm-format-enforcer 0.11's transformers integration imports transformers.tokenization_utils, which
        # transformers 5 no longer has: the name it wants lives in tokenization_utils_base.
        sys.modules.setdefault("transformers.tokenization_utils", base)
        from lmformatenforcer import JsonSchemaParser
        from lmformatenforcer.integrations.transformers import build_transformers_prefix_allowed_tokens_fn

        ways["lm-format-enforcer"] = lambda: {
            "prefix_allowed_tokens_fn": build_transformers_prefix_allowed_tokens_fn(engine.tokenizer, JsonSchemaParser(SCHEMA))}
    except ImportError:
        print("(lm-format-enforcer not installed: pip install lm-format-enforcer to compare it)")

    print(f"{len(inputs)} SQuAD questions, SmolLM2-135M fp32, greedy, max {args.max_tokens} new tokens, {os.cpu_count()} cores")
    for name, constraint in ways.items():
        seconds, tokens, valid = [], 0, 0
        for i, ids in enumerate([inputs[0], *inputs]):  # the first run warms up (grammar compile, caches)
            started = time.perf_counter()
            with torch.inference_mode():
                out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_tokens,
                                            do_sample=False, temperature=None, top_p=None, top_k=None,
                                            pad_token_id=engine.tokenizer.eos_token_id, **constraint())
            if i == 0:
                continue
            seconds.append(time.perf_counter() - started)
            new = out[0, ids.shape[1]:]
            tokens += len(new)
            valid += matches(engine.tokenizer.decode(new, skip_special_tokens=True))
        print(f"  {name:<20} {statistics.median(seconds):6.2f} s per answer   {tokens / sum(seconds):6.1f} tokens/s   "
              f"valid for the schema {valid}/{len(inputs)}")


if __name__ == "__main__":
    main()
