"""End-to-end `/ask` as a user sees it, for two checkouts of ragtune side by side. Prints
figures; asserts nothing.

Each checkout's `ragtune serve` runs in turn (never both at once: 2 cores) on the same SQuAD
index with the real embedded engine, greedy decoding, and answers the same questions; rounds
alternate the order, so drift in machine load falls on both. Per checkout: seconds per answer
(p50, p90), the service's own steps (retrieval, packing, generation; medians), and whether
the answers were the same.

    python bench/ask.py --base /path/to/other/checkout [--questions 12] [--rounds 2] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
SQUAD = REPO.parent / "shared" / "data" / "squad-v2-dev-5articles.json"
LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); from ragtune.cli import main; sys.argv[0] = 'ragtune'; main()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tree: Path, index: Path, log: Path, settings: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`ragtune serve` from `tree` with only the given RAGTUNE_* settings; its URL once ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_")} | {"HF_HUB_OFFLINE": "1"} | (settings or {})
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(tree), "serve", "--index-dir", str(index), "--port", str(port)],
                            env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=tree)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # a first start converts the model
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{tree} did not become ready")


def ask_all(url: str, questions: list[str], max_tokens: int) -> list[dict]:
    httpx.post(f"{url}/ask", json={"question": questions[0], "max_tokens": 8}, timeout=120)  # warm-up, not counted
    results = []
    for question in questions:
        started = time.perf_counter()
        body = httpx.post(f"{url}/ask", json={"question": question, "max_tokens": max_tokens}, timeout=300).json()
        results.append({"seconds": time.perf_counter() - started, "answer": body["answer"], "timings": body["timings_ms"],
                        "tokens": body["usage"]["completion_tokens"]})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="The other checkout (e.g. a git worktree of an earlier commit).")
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48, help="Answer length cap (the default answers often run to it).")
    args = parser.parse_args()
    squad = json.loads(SQUAD.read_text())["data"]
    questions = [qa["question"] for a in squad for p in a["paragraphs"] for qa in p["qas"]][:: 25][: args.questions]
    trees = {"this checkout": REPO, "base": args.base.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = [{"id": f"{a['title']}-{i}", "title": a["title"].replace("_", " "), "text": p["context"]}
                   for a in squad for i, p in enumerate(a["paragraphs"])]
        (tmp / "squad.jsonl").write_text("\n".join(json.dumps(r) for r in records))
        subprocess.run([sys.executable, "-m", "ragtune", "index", "add", str(tmp / "squad.jsonl"), "--index-dir", str(tmp / "index"),
                        "--root", str(tmp)], check=True, cwd=REPO, capture_output=True)
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            for name in (list(trees) if round_ % 2 == 0 else list(trees)[::-1]):
                proc, url = serve(trees[name], tmp / "index", tmp / f"{name.replace(' ', '-')}.log")
                try:
                    results[name] += ask_all(url, questions, args.max_tokens)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    print(f"{len(questions)} SQuAD questions x {args.rounds} rounds, embedded engine, greedy, max_tokens {args.max_tokens}; "
          f"cpus {os.cpu_count()}")
    p50 = {}
    for name, runs in results.items():
        seconds = sorted(r["seconds"] for r in runs)
        p50[name] = statistics.median(seconds)
        steps = {k: statistics.median(r["timings"][k] for r in runs) for k in ("retrieval", "packing", "generation")}
        print(f"  {name:14} p50 {p50[name]:6.3f} s   p90 {seconds[int(0.9 * (len(seconds) - 1))]:6.3f} s   "
              + "   ".join(f"{k} {v:7.1f} ms" for k, v in steps.items())
              + f"   answer tokens {statistics.mean(r['tokens'] for r in runs):.1f}")
    same = sum(a["answer"] == b["answer"] for a, b in zip(*results.values()))
    print(f"  this checkout / base, p50: {p50['this checkout'] / p50['base']:.3f}x; "
          f"same answers: {same} of {len(results['base'])}")


if __name__ == "__main__":
    main()
