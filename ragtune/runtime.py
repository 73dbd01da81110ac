"""Process-wide settings that must be made before torch or FAISS load their thread pools."""

from __future__ import annotations

import os
import sys


def serving_thread_policy() -> None:
    """Thread-pool settings for a process that answers requests one small piece of work at a time.

    - Idle OpenMP threads sleep at once instead of spinning for the next parallel region. A
      service embeds one question and searches once per request, then spends the rest of
      the request in Python (the event loop, packing, JSON). With spinning threads, torch's
      and FAISS's pools keep the cores busy for a while after each call, and on a small
      machine the event loop waits for a core: bench/query.py measured the HTTP /ask
      overhead over direct calls drop from +7.7 ms to +3.8 ms with this on 2 cores, with
      decode speed unchanged. libgomp reads it once, when it loads, so this must run before
      torch or faiss is imported.
    - The Rust tokenizers encode without their thread pool. A request counts a question and
      a few passage headers; handing those to worker threads costs more than it saves
      (~50 µs per request on 2 cores, measured after an embedding, as on the request path).
      Tokenizers read this on every call.

    A value the user set wins.
    """
    if "torch" not in sys.modules and "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
