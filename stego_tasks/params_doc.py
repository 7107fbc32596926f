"""`params.yaml` described: a JSON Schema generated from the typed params, and each key's comments.

The schema is derived, never written by hand: each block's frozen dataclass
(`stego_tasks.config`) gives the keys, their types and defaults; `FIELD_RANGES`
(`stego_tasks.params_schema`) the allowed ranges; and the comment beside a key in
`params.yaml` (else its block's docstring) the one-line help. `stego params --schema`
writes it to `stego_tasks/params.schema.json`, which `params.yaml` names for YAML-aware
editors; a test fails when the committed file differs from the generated one.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

from stego_tasks.config import DemoParams, Params
from stego_tasks.params_schema import FIELD_RANGES, _Range

SCHEMA_FILE = Path(__file__).with_name("params.schema.json")
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")


def yaml_comments(text: str) -> dict[str, str]:
    """The comment of each key of a YAML file, by dotted key ("train.steps"): the `#` text on the
    key's own line, or for a block the comment lines right under it.

    A line-level reading, enough for params files (mappings of scalars and flow lists).
    """
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last_block: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if last_block is not None:
                comments[last_block] = f"{comments.get(last_block, '')} {stripped.lstrip('#').strip()}".strip()
            continue
        match = _KEY_LINE.match(line)
        if not match:
            last_block = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([name for _, name in stack] + [match["key"]])
        if match["comment"]:
            comments[dotted] = match["comment"].strip()
        if not match["value"].strip():  # a block: its keys follow, indented
            stack.append((indent, match["key"]))
            last_block = dotted
        else:
            last_block = None
    return comments


def _bounds(allowed: _Range | None) -> dict[str, Any]:
    if allowed is None:
        return {}
    bounds: dict[str, Any] = {}
    if allowed.low is not None:
        bounds["exclusiveMinimum" if allowed.low_excluded else "minimum"] = allowed.low
    if allowed.high is not None:
        bounds["maximum"] = allowed.high
    return bounds


def type_schema(hint: Any, allowed: _Range | None = None) -> dict[str, Any]:
    """The JSON Schema of a value of annotation `hint` within range `allowed`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer", **_bounds(allowed)}
    if hint is float:
        return {"type": "number", **_bounds(allowed)}
    if hint is str:
        return {"type": "string"}
    if hint is type(None):
        return {"type": "null"}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [type_schema(arm, allowed) for arm in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [type_schema(a) for a in args], "items": False,
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", **({"items": type_schema(args[0])} if args else {})}
    if origin is dict or hint is dict:
        return {"type": "object"}
    return {}


def _summary(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _default(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def block_schema(cls: type, block: str, comments: dict[str, str]) -> dict[str, Any]:
    """The schema of one params block (a dataclass): its keys, types, ranges, defaults and help."""
    hints = typing.get_type_hints(cls)
    properties = {}
    for item in dataclasses.fields(cls):
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        schema = type_schema(hints[item.name], item.metadata.get("range", FIELD_RANGES.get(item.name)))
        help_text = comments.get(f"{block}.{item.name}") or _summary(cls)
        properties[item.name] = {**schema, "default": _default(default), "description": help_text}
    return {"type": "object", "description": comments.get(block) or _summary(cls), "properties": properties,
            "additionalProperties": False}


def json_schema(comments: dict[str, str]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a whole params file.

    Args:
        comments: `yaml_comments` of the documented params file (params.yaml).
    """
    hints = typing.get_type_hints(Params)
    properties: dict[str, Any] = {}
    for item in dataclasses.fields(Params):
        hint = hints[item.name]
        if item.name == "demo":
            properties["demo"] = _demo_schema(comments, hints)
        elif dataclasses.is_dataclass(hint):
            properties[item.name] = block_schema(hint, item.name, comments)
        else:
            allowed = FIELD_RANGES.get(item.name)
            properties[item.name] = {**type_schema(hint, allowed), "default": item.default,
                                     "description": comments.get(item.name) or _summary(Params)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "STEGO pipeline params.yaml",
        "description": "Generated by `stego params --schema` from stego_tasks/config.py; do not edit by hand.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }


def _demo_schema(comments: dict[str, str], hints: dict[str, Any]) -> dict[str, Any]:
    """The `demo` block: any keys of `extract` and `train` (no defaults: absent means not overridden)."""
    overrides = {}
    for name in ("extract", "train"):
        keys = block_schema(hints[name], name, comments)["properties"]
        overrides[name] = {"type": "object", "additionalProperties": False,
                           "description": f"overrides of {name} keys while corpus.demo is true",
                           "properties": {key: {k: v for k, v in spec.items() if k != "default"} for key, spec in keys.items()}}
    return {"type": "object", "description": comments.get("demo") or _summary(DemoParams), "additionalProperties": False,
            "properties": overrides}


def key_field(key: str) -> tuple[type, dataclasses.Field] | None:
    """(block class, field) of a dotted key such as "train.steps"; None for a top-level key or an unknown one."""
    block, _, name = key.partition(".")
    hints = typing.get_type_hints(Params)
    cls = hints.get(block)
    if not name or cls is None or not dataclasses.is_dataclass(cls):
        return None
    fields = {item.name: item for item in dataclasses.fields(cls)}
    return (cls, fields[name]) if name in fields else None
