"""MkDocs hook: the settings and HTTP API reference pages are generated at build time from the
code itself (`ragtune/settings.py` and the service's OpenAPI document), so they are never
written twice. A page holds a marker comment where its generated part goes."""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path

from pydantic import BaseModel, SecretStr

SETTINGS_MARKER = "<!-- settings reference -->"
API_MARKER = "<!-- api reference -->"
HOME = str(Path.home())


def on_config(config):
    """Included files (ARCHITECTURE.md, deploy/README.md) are found from the repository root, wherever
    mkdocs is run from."""
    root = str(Path(config.config_file_path).resolve().parent)
    config.mdx_configs.setdefault("pymdownx.snippets", {})["base_path"] = [root]
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_reference())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_reference())
    return markdown


# --- settings ---------------------------------------------------------------------------------

def settings_reference() -> str:
    from ragtune.settings import Settings

    out = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        doc = (model.__doc__ or "").strip()
        out.append(f"## `{section}`\n")
        if doc and not doc.startswith(model.__name__ + "("):
            out.append(" ".join(doc.split()) + "\n")
        out.append("| variable | default | meaning |\n| --- | --- | --- |")
        out += _rows(model, f"RAGTUNE_{section.upper()}__")
        out.append("")
    return "\n".join(out)


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{prefix}{name.upper()}__")
            continue
        meaning = " ".join((field.description or "").split())
        allowed = _choices(annotation)
        if allowed:
            meaning += f" One of {allowed}."
        bounds = _bounds(field)
        if bounds:
            meaning += f" {bounds}."
        rows.append(f"| `{prefix}{name.upper()}` | {_default(field)} | {_cell(meaning)} |")
    return rows


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "set"
    if isinstance(value, Path) or isinstance(value, str):
        text = str(value)
        if "site-packages" in text:
            return "the packaged model"
        text = text.replace(HOME, "~")
        return f"`{json.dumps(text)[1:-1]}`" if text else "`\"\"`"
    if isinstance(value, (list, dict, bool, int, float)):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _choices(annotation) -> str:
    literals = []
    for part in typing.get_args(annotation) or ():
        if typing.get_origin(part) is typing.Literal:
            literals += typing.get_args(part)
    if typing.get_origin(annotation) is typing.Literal:
        literals = list(typing.get_args(annotation))
    return ", ".join(f"`{value}`" for value in literals)


def _bounds(field) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    found = []
    for item in field.metadata:
        for attr, word in words.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{word} {value}")
    return ", ".join(found)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- HTTP API ---------------------------------------------------------------------------------

def api_reference() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ragtune.settings import get_settings
    from service.app import create_app

    spec = create_app(get_settings()).openapi()
    schemas = spec.get("components", {}).get("schemas", {})
    out = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "delete", "patch"}:
                continue
            out.append(f"## `{method.upper()} {path}`\n")
            summary = operation.get("description") or operation.get("summary") or ""
            if summary:
                out.append(" ".join(summary.split()) + "\n")
            if path.startswith("/admin/"):
                out.append("Needs the admin key (`Authorization: Bearer`, `service.admin_api_key`).\n")
            elif path.startswith(("/v1/", "/ask")):
                out.append("Needs a client key (`Authorization: Bearer`) when `service.api_keys` is set.\n")
            else:
                out.append("Open, for probes.\n")
            params = operation.get("parameters", [])
            if params:
                out.append("| parameter | in | required | type | meaning |\n| --- | --- | --- | --- | --- |")
                for param in params:
                    out.append(f"| `{param['name']}` | {param['in']} | {'yes' if param.get('required') else 'no'} | "
                               f"{_type(param.get('schema', {}), schemas)} | "
                               f"{_cell(' '.join(param.get('description', '').split()))} |")
                out.append("")
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                schema = _resolve(content.get("schema", {}), schemas)
                out.append(f"Request body (`{media}`):\n")
                out += _properties(schema, schemas)
            codes = ", ".join(f"{code} {_cell(r.get('description', ''))}" for code, r in operation.get("responses", {}).items())
            if codes:
                out.append(f"Responses: {codes}.\n")
    out.append("## Schemas\n")
    for name, schema in schemas.items():
        out.append(f"### {name}\n")
        if schema.get("description"):
            out.append(" ".join(schema["description"].split()) + "\n")
        out += _properties(schema, schemas)
    return "\n".join(out)


def _resolve(schema: dict, schemas: dict) -> dict:
    while "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _properties(schema: dict, schemas: dict) -> list[str]:
    props = schema.get("properties", {})
    if not props:
        return [f"{_type(schema, schemas)}\n"]
    required = set(schema.get("required", []))
    rows = ["| field | type | required | meaning |\n| --- | --- | --- | --- |"]
    for name, prop in props.items():
        meaning = " ".join((_resolve(prop, schemas).get("description") or prop.get("description") or "").split())
        rows.append(f"| `{name}` | {_type(prop, schemas)} | {'yes' if name in required else 'no'} | {_cell(meaning)} |")
    return rows + [""]


def _type(schema: dict, schemas: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type(s, schemas) for s in schema[key])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "object")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}), schemas)}"
    return str(kind)


