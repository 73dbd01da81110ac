"""Helpers for tests that run the real `ragtune` command in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx


def ragtune_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200", **extra)
    return env


def ragtune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ragtune", *args]


def run_ragtune(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(ragtune_cmd(*args), capture_output=True, text=True, timeout=timeout, env=ragtune_env(**env))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real server process on a local port; `stop()` or leaving the `with` block ends it."""

    def __init__(self, cmd: list[str], port: int, log_path: Path, env: dict[str, str] | None = None):
        self.cmd, self.port, self.log_path, self.env = cmd, port, log_path, env or ragtune_env()
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, ready_path: str = "/health", timeout: float = 300) -> Server:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"{self.cmd[2:]} exited:\n" + self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.cmd[2:]} did not become ready"
            try:
                if httpx.get(f"{self.url}{ready_path}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def serving(index: Path, log_dir: Path, **env: str) -> Iterator[Server]:
    """`ragtune serve` on `index`, on a free port with its log in `log_dir`, ready; stopped after."""
    port = free_port()
    cmd = ragtune_cmd("serve", "--index-dir", str(index), "--port", str(port))
    with Server(cmd, port, log_dir / "server.log", ragtune_env(**env)) as served:
        yield served.start("/ready")


def raw_multipart(name: bytes, data: bytes) -> tuple[bytes, dict]:
    """A one-file multipart body written byte by byte (clients escape control characters in a file
    name; a hostile one need not), and its content type."""
    body = (b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="' + name + b'"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--b0undary--\r\n")
    return body, {"content-type": "multipart/form-data; boundary=b0undary"}
