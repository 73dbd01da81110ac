"""The dependency rules of ARCHITECTURE.md, read from the code's own imports (function-level
imports included): a layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("ragtune", "indexer", "service", "finetune", "evaluation")

# (layer, module prefixes), most specific prefixes matched first.
LAYERS = {
    "entry": ("ragtune.cli", "ragtune.__main__"),
    "kernel": ("ragtune",),
    "indexer": ("indexer",),
    "generation": ("service.generation",),
    "core": ("service.schema", "service.retrieval", "service.packing", "service.fewshot", "service.answerable", "service.pipeline"),
    "http": ("service",),
    "finetune": ("finetune",),
    "evaluation": ("evaluation",),
}
MAY_IMPORT = {
    "entry": set(LAYERS),
    "kernel": {"kernel"},
    "indexer": {"kernel", "indexer"},
    "generation": {"kernel", "generation"},
    "core": {"kernel", "indexer", "generation", "core"},
    "http": {"kernel", "indexer", "generation", "core", "http"},
    "finetune": {"kernel", "indexer", "generation", "core", "finetune"},
    "evaluation": {"kernel", "indexer", "generation", "core", "evaluation"},
}


def layer_of(module: str) -> str | None:
    matches = [(len(prefix), layer) for layer, prefixes in LAYERS.items() for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of one of our packages in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from service import errors` imports service.errors
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n for n in names[1:] if layer_of(n)] if node.module in PACKAGES else [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in PACKAGES]
    return found


SOURCES = sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_every_module_has_a_layer():
    assert SOURCES
    assert [module_name(p) for p in SOURCES if layer_of(module_name(p)) is None] == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_module_imports_only_the_layers_below_it(path):
    mine = layer_of(module_name(path))
    wrong = [f"line {line}: {name} ({layer_of(name)})" for line, name in imports(path)
             if layer_of(name) not in MAY_IMPORT[mine]]
    assert wrong == [], f"{module_name(path)} is in layer {mine!r}, which may import only {sorted(MAY_IMPORT[mine])}"


def test_the_rules_catch_a_wrong_import(tmp_path):
    """The reader sees imports inside functions and `from package import module` alike."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from service import app\n    import finetune.train\n")
    assert [name for _, name in imports(sample)] == ["service.app", "finetune.train"]
    assert {layer_of(n) for _, n in imports(sample)} == {"http", "finetune"}
    assert layer_of("service.packing") == "core" and layer_of("service.generation.local") == "generation"
