"""The front door: a short README whose commands and links hold, and a documentation site that builds
with `mkdocs build --strict` (no broken link or anchor, every page in the navigation), whose reference
pages are generated from the code."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from ragtune.settings import Settings

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d+|#\d{1,4}\b(?![0-9a-f])", re.IGNORECASE)


def env_vars(model: type[BaseModel], prefix: str = "RAGTUNE_") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names += env_vars(field.annotation, f"{prefix}{name.upper()}__")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    return out


def text_of(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))


def test_the_site_builds_strictly_with_every_page_in_the_navigation(site):
    for page in (REPO / "docs").rglob("*.md"):
        name = page.relative_to(REPO / "docs").with_suffix("")
        built = site / "index.html" if name == Path("index") else site / name / "index.html"
        assert built.exists(), f"{page} was not built"
    nav = (site / "index.html").read_text()
    for title in ("Getting started", "Security", "Settings", "HTTP API", "Measurements"):
        assert title in nav


def test_the_settings_reference_is_generated_from_the_settings_tree(site):
    page = text_of(site / "reference" / "settings" / "index.html")
    missing = [name for name in env_vars(Settings) if name not in page]
    assert not missing, f"settings missing from the reference: {missing}"
    assert "site-packages" not in page and str(Path.home()) not in page  # no build machine's paths


def test_the_api_reference_lists_every_route_of_the_openapi_document(site):
    from service.app import create_app

    spec = create_app(Settings()).openapi()
    page = text_of(site / "reference" / "api" / "index.html")
    routes = [f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops]
    assert routes and not [route for route in routes if route not in page]
    for schema in spec["components"]["schemas"]:
        assert schema in page


def test_the_included_pages_carry_their_sources(site):
    assert "ragtune is five parts and a kernel" in text_of(site / "architecture" / "index.html")
    first = (REPO / "deploy" / "README.md").read_text().splitlines()[0].lstrip("# ")
    assert first in text_of(site / "deployment" / "index.html")


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) <= 200
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_the_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target


@pytest.mark.parametrize("path", ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").rglob("*.md"))])
def test_no_issue_numbers_in_user_facing_text(path):
    found = ISSUE_NUMBER.findall((REPO / path).read_text())
    assert not found, f"{path}: {found}"
