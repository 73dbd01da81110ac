"""Serve the index and answer a question over HTTP, as a user would: `make demo` runs this.

    python examples/demo.py INDEX_DIR "question" [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import httpx


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("index_dir")
    parser.add_argument("question")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "ragtune", "serve", "--index-dir", args.index_dir, "--port", str(args.port)])
    try:
        deadline = time.monotonic() + 600  # the first start converts the model once
        while True:
            if server.poll() is not None:
                print("the service exited; see its log above", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("the service did not become ready in time", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"\n$ curl -s {base}/ask -H 'content-type: application/json' -d '{json.dumps({'question': args.question})}'\n")
        response = httpx.post(f"{base}/ask", json={"question": args.question}, timeout=300)
        body = response.json()
        if response.status_code != 200:
            print(json.dumps(body, indent=2), file=sys.stderr)
            return 1
        print(f"Q: {args.question}\nA: {body['answer']}\n")
        for c in body["citations"]:
            where = " > ".join(c["headings"]) or c["title"] or ""
            print(f"  [{c['number']}] {c['source']}{' (' + where + ')' if where else ''}  score {c['score']:.2f}")
        usage = body["usage"]
        print(f"\n  {usage['prompt_tokens']} prompt + {usage['completion_tokens']} answer tokens; "
              f"index version {body['index_version']}; model {body['model']}")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
