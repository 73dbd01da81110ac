"""Helpers for tests that run the real `ragtune` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys


def ragtune_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200", **extra)
    return env


def ragtune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ragtune", *args]


def run_ragtune(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(ragtune_cmd(*args), capture_output=True, text=True, timeout=timeout, env=ragtune_env(**env))
