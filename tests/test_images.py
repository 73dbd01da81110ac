"""The images start: each Dockerfile's file set, taken exactly as `docker build` would take it
(its COPY lines through .dockerignore), is installed on its own and runs the CLI it ships.

No Docker engine runs here, so the build is replayed: the context is filtered by .dockerignore
with Docker's rules, every COPY of the build stage is copied into an empty directory, the
project is installed from there with pip (no dependencies: those are the image's own pip
step, the same pins as this environment), and the commands run with nothing else on the
path: not the checkout, not its editable install.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.helpers import Server, free_port, ragtune_env

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((REPO / "deploy").glob("*.Dockerfile"))
pytestmark = pytest.mark.slow


def dockerignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").strip("/")))
    return rules


def _matches(pattern: str, path: str) -> bool:
    """Docker's pattern matching (Go filepath.Match per segment, `**` for any depth); a
    directory pattern covers what is under it."""
    regex = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else fnmatch.translate(part)[4:-3]
        for part in re.split(r"(\*\*|\*)", pattern)
    )
    return re.fullmatch(regex + "(/.*)?", path) is not None


def in_context(path: str, rules) -> bool:
    included = True
    for negated, pattern in rules:  # the last rule that matches decides
        if _matches(pattern, path):
            included = negated
    return included


def build_stage_copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY in the first stage (later stages copy from it)."""
    return [(args.split()[:-1], args.split()[-1]) for stage, word, args in instructions(dockerfile)
            if stage == 1 and word == "COPY" and not args.startswith("--from")]


def replay_copies(dockerfile: Path, root: Path) -> Path:
    rules = dockerignore_rules()
    for sources, destination in build_stage_copies(dockerfile):
        target = root / destination.lstrip("./")
        for source in sources:
            origin = REPO / source
            files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if not in_context(relative, rules):
                    continue
                inside = file.name if origin.is_file() else file.relative_to(origin)
                dest = target / inside if (destination.endswith("/") or len(sources) > 1 or origin.is_dir()) else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, dest)
    return root / "src"


def instructions(dockerfile: Path) -> list[tuple[int, str, str]]:
    """(stage, instruction, arguments) of each line, continuation lines joined; stages count from 1."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    found, stage = [], 0
    for line in joined.splitlines():
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        stage += words[0] == "FROM"
        found.append((stage, words[0], words[1] if len(words) > 1 else ""))
    return found


def image_env_settings(dockerfile: Path) -> dict[str, str]:
    """The ENV the image runs with (its last stage's)."""
    steps = instructions(dockerfile)
    last = max(stage for stage, _, _ in steps)
    return {key: value for stage, word, args in steps if stage == last and word == "ENV"
            for key, value in re.findall(r"(\w+)=(\S+)", args)}


def test_the_dockerignore_reading_follows_dockers_rules():
    rules = [(False, "*"), (True, "service"), (False, "**/__pycache__")]
    assert not in_context("tests/test_x.py", rules)
    assert in_context("service/app.py", rules)
    assert not in_context("service/__pycache__/app.cpython-311.pyc", rules)
    assert not in_context("evaluation/cli.py", rules)  # what left the images unable to start


@pytest.fixture(scope="module")
def image(request, tmp_path_factory) -> Path:
    """The replayed image: the project installed from its Dockerfile's file set alone."""
    root = tmp_path_factory.mktemp(request.param.stem)
    source = replay_copies(request.param, root / "build")
    site = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return site


def in_image(site: Path, *args: str) -> list[str]:
    """The command the image's entry point runs, seeing only the installed project and its dependencies."""
    return [sys.executable, "-S", "-m", "ragtune", *args]


def image_env(site: Path, **extra: str) -> dict[str, str]:
    # -S: no site-packages processing, so the checkout's editable install is invisible;
    # the dependencies come from this environment's site-packages, added by hand.
    return ragtune_env(PYTHONPATH=f"{site}:{sysconfig.get_paths()['purelib']}", **extra)


@pytest.mark.parametrize("image", DOCKERFILES, ids=lambda p: p.name, indirect=True)
def test_the_image_cli_starts_and_indexes(image, tmp_path):
    cwd = tmp_path / "home"
    cwd.mkdir()
    help_ = subprocess.run(in_image(image, "--help"), capture_output=True, text=True, cwd=cwd, env=image_env(image))
    assert help_.returncode == 0, help_.stderr[-3000:]
    for command in ("index", "serve", "ask", "finetune", "adapters", "eval"):
        assert command in help_.stdout
    (tmp_path / "doc.md").write_text("# Tides\n\nSpring tides come twice a month.\n")
    added = subprocess.run(
        in_image(image, "index", "add", str(tmp_path / "doc.md"), "--index-dir", str(tmp_path / "index")),
        capture_output=True, text=True, cwd=cwd, env=image_env(image), timeout=300,
    )
    assert added.returncode == 0, added.stderr[-3000:]
    assert (tmp_path / "index" / "CURRENT").is_file()


@pytest.mark.parametrize("image", [REPO / "deploy" / "service.Dockerfile"], ids=["service.Dockerfile"], indirect=True)
def test_the_service_image_serves_an_answer(image, tmp_path):
    index = tmp_path / "index"
    (tmp_path / "doc.md").write_text("# Tides\n\nSpring tides come twice a month.\n")
    # The image's exporter venv is built by the recipe that builds .venv-openvino (tests/test_deploy.py checks
    # that), so that venv stands in for it; a cache of its own, as the image's volume starts empty, so the
    # first start converts and exports the model as the image's does.
    from ragtune.settings import GenerationSettings
    from service.generation.openvino_files import exporter_path

    stand_in = exporter_path(GenerationSettings())  # the checkout's .venv-openvino
    env = image_env(image, RAGTUNE_GENERATION__OPENVINO_EXPORTER=str(stand_in), RAGTUNE_GENERATION__CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run(in_image(image, "index", "add", str(tmp_path / "doc.md"), "--index-dir", str(index)),
                   check=True, capture_output=True, cwd=tmp_path, env=env, timeout=300)
    port = free_port()
    with Server(in_image(image, "serve", "--index-dir", str(index), "--port", str(port)), port, tmp_path / "log", env) as server:
        server.start("/ready", timeout=600)
        answer = httpx.post(f"{server.url}/ask", json={"question": "How often are spring tides?", "max_tokens": 8}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["citations"][0]["source"].endswith("doc.md")
    log = (tmp_path / "log").read_text()
    assert "local engine: openvino" in log  # the engine the default picks on a CPU
    assert "merging the answer adapter grounded-answers" in log  # the image carries the adapter it merges by default
