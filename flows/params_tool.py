"""`stego params`: the params schema (write it, or check the committed one) and `--explain KEY`.

`--explain train.steps` prints the key's type and range, its default, its value in the
params file, its help, the DVC stages that read it (dvc.yaml's `params:`) and, from each
file in `stego_tasks/presets/` that sets it (the defaults file, and each preset that
overrides it), the published value and the comment saying where it comes from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from importlib import resources
from pathlib import Path

import yaml

from stego_tasks.config import Params
from stego_tasks.errors import InvalidInputError
from stego_tasks.params_doc import SCHEMA_FILE, json_schema, key_field, yaml_comments
from stego_tasks.params_schema import FIELD_RANGES, _describe, dvc_stages, read_yaml
from stego_tasks.paths import PARAMS_FILE


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `stego params` arguments to `parser`."""
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--explain", metavar="KEY", help="explain one key, e.g. train.steps")
    action.add_argument("--schema", action="store_true", help=f"write the JSON schema to {SCHEMA_FILE.name} (or --out)")
    action.add_argument("--check-schema", action="store_true", help="exit 1 when the committed schema is not the generated one")
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help=f"params file (default: {PARAMS_FILE})")
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"), help="pipeline file (default: dvc.yaml)")
    parser.add_argument("--out", type=Path, default=SCHEMA_FILE, help=f"schema file (default: {SCHEMA_FILE})")


def _yaml_text(path: Path) -> tuple[object, str]:
    """(parsed, text) of a YAML file the user named; a folder, non-UTF-8 text or malformed YAML is one sentence."""
    return read_yaml(path), path.read_text(encoding="utf-8")


def generated_schema_text(params_path: Path) -> str:
    """The schema generated from the typed params and the comments of `params_path`, as file text."""
    comments = yaml_comments(_yaml_text(params_path)[1])
    return json.dumps(json_schema(comments), indent=2) + "\n"


def stages_reading(key: str, dvc_yaml: Path) -> list[str]:
    """The dvc.yaml stages whose `params:` declare `key`, its block or one of its keys."""
    stages = dvc_stages(dvc_yaml, "pass --dvc-yaml the project's dvc.yaml")
    found = []
    for name, stage in stages.items():
        declared: list[str] = []
        for entry in stage.get("params", []) or []:
            declared += [entry] if isinstance(entry, str) else [k for keys in entry.values() for k in keys]
        if any(key == d or key.startswith(f"{d}.") or d.startswith(f"{key}.") for d in declared):
            found.append(name)
    return found


def _lookup(data: object, key: str) -> tuple[bool, object]:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def _preset_lines(key: str) -> list[str]:
    lines = []
    for preset in sorted(resources.files("stego_tasks.presets").iterdir(), key=lambda p: p.name):
        if not preset.name.endswith(".yaml"):
            continue
        text = preset.read_text(encoding="utf-8")
        present, value = _lookup(yaml.safe_load(text), key)
        if present:
            comment = yaml_comments(text).get(key)
            lines.append(f"    {preset.name[:-5]}: {json.dumps(value)}" + (f"   # {comment}" if comment else ""))
    return lines


def explain(key: str, params_path: Path, dvc_yaml: Path) -> str:
    """What `stego params --explain KEY` prints.

    Raises:
        ValueError: `key` is no key of the params (the sentence lists the block's keys).
    """
    found = key_field(key)
    hints = typing.get_type_hints(Params)
    if found is None and key not in hints:
        block = key.partition(".")[0]
        cls = hints.get(block)
        known = [f"{block}.{f.name}" for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else list(hints)
        raise InvalidInputError(f"params has no key {key!r}; the keys there are: {', '.join(known)}.")
    if found is None:
        hint, default, allowed, cls = hints[key], next(f.default for f in dataclasses.fields(Params) if f.name == key), \
            FIELD_RANGES.get(key), Params
    else:
        cls, item = found
        hint = typing.get_type_hints(cls)[item.name]
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        allowed = item.metadata.get("range", FIELD_RANGES.get(item.name))
    if dataclasses.is_dataclass(hint):
        raise InvalidInputError(f"{key} is a block; explain one of its keys, e.g. {key}.{dataclasses.fields(hint)[0].name}.")
    values, text = _yaml_text(params_path) if params_path.exists() else (None, "")
    present, value = _lookup(values or {}, key)
    demo_present, demo_value = _lookup(values or {}, f"demo.{key}")
    stages = stages_reading(key, dvc_yaml) if dvc_yaml.exists() else []
    lines = [
        key,
        f"  type:     {_describe(hint, allowed)}",
        f"  default:  {json.dumps(list(default) if isinstance(default, tuple) else default)} (stego_tasks/presets/defaults.yaml)",
        f"  value:    {json.dumps(value) if present else 'not set'} in {params_path}"
        + (f"; {json.dumps(demo_value)} while corpus.demo is true (demo.{key})" if demo_present else ""),
        f"  help:     {yaml_comments(text).get(key) or (cls.__doc__ or '').strip().splitlines()[0]}",
        "  read by:  " + (", ".join(stages) if stages else "no DVC stage declares it (it changes no result, or is not a param)"),
        "  published values (stego_tasks/presets/: the defaults, and each preset that overrides them):",
        *(_preset_lines(key) or ["    none: no preset sets it"]),
    ]
    return "\n".join(lines)


def params_from_args(args: argparse.Namespace) -> int:
    """Run `stego params`; returns the exit status."""
    if args.explain is not None:
        print(explain(args.explain, args.params, args.dvc_yaml))
        return 0
    text = generated_schema_text(args.params)
    if args.check_schema:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out} is {'up to date' if same else 'stale: run `stego params --schema`'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0
