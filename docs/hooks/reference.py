"""MkDocs hook: the configuration reference, generated at build time from the pydantic models.

A page holds a marker, ``<!-- reference: NAME -->``, and the build replaces it with tables written from
the model NAME names (`REFERENCES`): every field with its type, default, bounds and description, as the
API's JSON schema states them. Nothing is copied by hand, so the page cannot lag the code. A field without
a description (or a nested model without a docstring) is a build warning, and the build treats warnings
as errors: describe the setting where it is defined.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

log = logging.getLogger("mkdocs.hooks.reference")

MARKER = re.compile(r"<!--\s*reference:\s*([a-z-]+)\s*-->")


# ------------------------------------------------------------------------------------------- cells


def _escape(text: str) -> str:
    """Table-cell safe: no pipes, no line breaks, and `<`, `>` outside code spans as text, not HTML
    (`node.<id>` would otherwise vanish as an unknown tag)."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _value(value: Any, quote_strings: bool = True) -> str:
    """A value as one writes it in TOML (and JSON): `"flip"`, `true`, `0.01`, `[3, 28, 28]`; in an
    environment variable a string goes unquoted."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str) and not quote_strings:
        return f"`{value}`" if value else "empty"
    return f"`{json.dumps(value)}`"


def _number(value: float | int) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return root["$defs"][ref.rsplit("/", 1)[1]]


def _type(schema: dict[str, Any], root: dict[str, Any]) -> str:
    """A JSON-schema type in words: `one of "a", "b"`, `integer`, `list of integer`, `number or unset`."""
    if "anyOf" in schema:
        parts = [s for s in schema["anyOf"] if s.get("type") != "null"]
        optional = len(parts) < len(schema["anyOf"])
        words = " or ".join(_type(p, root) for p in parts)
        return f"{words} or unset" if optional else words
    schema = _resolve(schema, root)
    if "enum" in schema:
        return "one of " + ", ".join(_value(v) for v in schema["enum"])
    if "const" in schema:
        return _value(schema["const"])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        return f"list of {_type(items, root)}" if items else "list"
    if kind == "object" and "properties" in schema:
        return "table"
    return {"boolean": "`true` or `false`", "string": "string", "integer": "integer", "number": "number"}.get(
        kind, str(kind)
    )


def _bounds(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return "; ".join(filter(None, (_bounds(s) for s in schema["anyOf"])))
    words = []
    for key, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in schema:
            words.append(f"{sign} {_number(schema[key])}")
    if "minLength" in schema or "maxLength" in schema:
        words.append(f"{schema.get('minLength', 0)} to {schema.get('maxLength', '∞')} characters")
    if "pattern" in schema:
        words.append(f"matches `{schema['pattern']}`")
    return ", ".join(words)


def _default(field: FieldInfo, quote_strings: bool) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if default is None or default is PydanticUndefined:
        return "unset"
    if isinstance(default, BaseModel):
        return "(table)"
    if hasattr(default, "get_secret_value"):
        return "(secret)"
    if isinstance(default, list) and not default:
        return "none"
    if not isinstance(default, str | int | float | bool | list | tuple):
        default = str(default)  # a Path, say: as written in a file or a variable
    return _value(default, quote_strings)


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__
    if not doc or doc is BaseModel.__doc__:
        log.warning("%s.%s has no docstring: say what this table holds", model.__module__, model.__qualname__)
        return ""
    return inspect.cleandoc(doc)


def _description(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    if not field.description:
        log.warning(
            "%s.%s.%s has no description: add Field(description=...) where it is defined",
            model.__module__,
            model.__qualname__,
            name,
        )
        return ""
    return field.description


def _nested(field: FieldInfo) -> type[BaseModel] | None:
    """The model a field holds (`model: ModelOptions`, `nodes: list[NodeSpec]`), else None."""
    annotation = field.annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


# ------------------------------------------------------------------------------------------- tables


def _table(
    model: type[BaseModel], key: Callable[[str], str], skip_nested: bool, environment: bool = False
) -> list[str]:
    root = model.model_json_schema()
    header = "variable" if environment else "setting"
    lines = [f"| {header} | type | default | bounds | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if skip_nested and _nested(field) is not None:
            continue
        schema = root["properties"][field.alias or name]
        cells = [
            f"`{key(name)}`",
            _type(schema, root),
            _default(field, quote_strings=not environment),
            _bounds(schema),
            _description(model, name, field),
        ]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return lines


def federation_reference() -> str:
    """`fedalign.config.FederationConfig`: the top level, then one section per nested table."""
    from fedalign.config import FederationConfig

    out = ["### Top level", "", _doc(FederationConfig), "", *_table(FederationConfig, str, skip_nested=True)]
    for name, field in FederationConfig.model_fields.items():
        nested = _nested(field)
        if nested is None:
            continue
        array = not isinstance(field.get_default(call_default_factory=True), BaseModel)
        header = f"[[{name}]]" if array else f"[{name}]"
        out += ["", f"### `{header}`", "", _doc(nested), "", *_table(nested, str, skip_nested=False)]
    return "\n".join(out)


def _settings_table(settings: type[BaseModel]) -> str:
    """A pydantic-settings class: one environment variable per field, named by its prefix."""
    prefix = settings.model_config.get("env_prefix", "")

    def variable(name: str) -> str:
        return f"{prefix}{name}".upper()

    return "\n".join(_table(settings, variable, skip_nested=False, environment=True))


def server_reference() -> str:
    """`backend.settings.Settings`: what the API service reads."""
    from backend.settings import Settings

    return _settings_table(Settings)


def worker_reference() -> str:
    """`workers.celery_app.WorkerSettings`: what node workers and REST nodes read."""
    from workers.celery_app import WorkerSettings

    return _settings_table(WorkerSettings)


REFERENCES: dict[str, Callable[[], str]] = {
    "federation-config": federation_reference,
    "server-settings": server_reference,
    "worker-settings": worker_reference,
}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in REFERENCES:
            log.warning(
                "%s: unknown reference %r (known: %s)", page.file.src_path, name, ", ".join(REFERENCES)
            )
            return match.group(0)
        return REFERENCES[name]()

    return MARKER.sub(replace, markdown)
