"""Published STEGO settings as data: the defaults once, and one overrides file per dataset and backbone.

`defaults.yaml` holds every value of a params file once, each with a comment saying where
in the reference code or paper it comes from (`stego_tasks.config` reads its dataclass
defaults from it). Each `<name>.yaml` beside it states only what differs from the
defaults, again with the citation of each value; `custom` differs in nothing.

A run gets a preset by writing it out as its params file (`stego adapt` does so for the
benchmarks): `params_text` renders the defaults file with the preset's values put in and
their citations as the comments, so DVC sees every effective value as an ordinary param
and a changed value re-runs exactly the stages that read it. The top-level `preset` key
only names the source and is recorded in the metrics and the report.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from stego_tasks.config import DEFAULTS_FILE, preset_names
from stego_tasks.errors import InvalidInputError
from stego_tasks.params_schema import read_yaml

DEFAULT_PRESET = "custom"
# One `key: value  # comment` line of the defaults or a preset file (mappings of scalars,
# flow lists and flow mappings, at most two levels deep).
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<value>[^#]*?)(?P<gap>\s*)(?:#\s?(?P<comment>.*))?$")


def list_presets() -> list[str]:
    """Names of the bundled presets, sorted (e.g. "cocostuff27_vits8", "custom")."""
    return preset_names()


def _folder(folder: str | Path | None) -> Path:
    return DEFAULTS_FILE.parent if folder is None else Path(folder)


def preset_text(name: str, folder: str | Path | None = None) -> str:
    """The preset file's text (only what differs from the defaults), comments included.

    Args:
        name: a preset from `list_presets()`.
        folder: where the preset files are (default: this package; tests pass a copy).

    Raises:
        ValueError: unknown preset name.
    """
    path = _folder(folder) / f"{name}.yaml"
    if name not in list_presets() and not (folder is not None and path.is_file() and name != DEFAULTS_FILE.stem):
        raise InvalidInputError(f"unknown preset {name!r}; use one of {list_presets()}.")
    return path.read_text(encoding="utf-8")


def preset_overrides(name: str, folder: str | Path | None = None) -> dict[str, Any]:
    """The preset as written: the blocks and keys whose values differ from the defaults."""
    return yaml.safe_load(preset_text(name, folder)) or {}


def defaults_text(folder: str | Path | None = None) -> str:
    """The published defaults file's text, comments included."""
    return (_folder(folder) / DEFAULTS_FILE.name).read_text(encoding="utf-8")


def _flat(values: dict[str, Any]) -> dict[str, Any]:
    """A params mapping by dotted key, one level into each block ("train.shifts": [...])."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    return flat


def _keyed(text: str) -> Iterator[tuple[str, re.Match[str] | None, str]]:
    """Each line of a params file with its `_LINE` match and dotted key ("train.shifts"; "" for no key)."""
    block = ""
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            yield line, None, ""
            continue
        block = match["key"] if not match["indent"] else block
        yield line, match, match["key"] if not match["indent"] else f"{block}.{match['key']}"


def _comments(text: str) -> dict[str, str]:
    """The `#` comment on each key's own line, by dotted key."""
    return {dotted: match["comment"].strip() for _, match, dotted in _keyed(text) if match and match["comment"]}


def load_preset(name: str, folder: str | Path | None = None) -> dict[str, Any]:
    """The preset's effective params mapping: the defaults with the preset's overrides merged in.

    Raises:
        ValueError: unknown preset name, or an override of a key the defaults do not have.
    """
    merged = copy.deepcopy(read_yaml(_folder(folder) / DEFAULTS_FILE.name))
    for dotted, value in _flat(preset_overrides(name, folder)).items():
        block, _, key = dotted.partition(".")
        if block not in merged or (key and (not isinstance(merged[block], dict) or key not in merged[block])):
            raise InvalidInputError(f"preset {name} sets {dotted}, which is no key of the defaults file; use a key of {DEFAULTS_FILE.name}.")
        if key:
            merged[block][key] = value
        else:
            merged[block] = value
    return merged


def _first_key(text: str) -> int:
    """Where the first key of a params file starts (what comes before is its header comment)."""
    match = re.search(r"^\w", text, re.MULTILINE)
    return match.start() if match else len(text)


def _flow(value: Any) -> str:
    """A value as one line of YAML ("[0.1, 1.0]", "dino_vitb8", "{steps: 10}")."""
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def _render(text: str, values: dict[str, Any], notes: dict[str, str]) -> str:
    """`text` (the defaults file, headerless) with each key of `notes` set to its value in `values`
    and its comment replaced by the note; every other line kept as written."""
    out = []
    for line, match, dotted in _keyed(text):
        if match and dotted in notes:
            head = f"{match['indent']}{match['key']}: {_flow(_flat(values)[dotted])}"
            # Keep the defaults file's comment column, so the citations line up.
            column = match.start("gap") + len(match["gap"]) if match["comment"] is not None else len(head) + 2
            line = f"{head.ljust(max(column, len(head) + 2))}# {notes[dotted]}"
        out.append(line)
    return "\n".join(out) + "\n"


def params_text(name: str, corpus: dict[str, Any], header: str = "", folder: str | Path | None = None) -> str:
    """A complete params.yaml for preset `name` with `corpus` merged over its corpus block.

    Every key of the defaults file is written (DVC must see every effective value). A
    value the preset overrides carries the preset's citation as its comment ("preset NAME:
    ..."), a corpus value given here says so, and every other line keeps the defaults
    file's own comment.

    Args:
        name: a preset from `list_presets()`.
        corpus: the corpus block (root, n_classes, ignore_index, class_names, demo); its
            values win over the preset's.
        header: comment lines to put first (without the leading "# ").
        folder: where the defaults and preset files are (default: this package).

    Returns:
        YAML text that `stego_tasks.config.load_params` reads.
    """
    values = load_preset(name, folder)
    unknown = sorted(set(corpus) - set(values["corpus"]))
    if unknown:
        raise InvalidInputError(f"corpus key(s) {unknown} are not keys of the corpus block; use {sorted(values['corpus'])}.")
    values["corpus"].update(corpus)
    cited = _comments(preset_text(name, folder))
    notes = {dotted: f"preset {name}: {cited[dotted]}" if dotted in cited else f"preset {name}"
             for dotted in _flat(preset_overrides(name, folder)) if dotted != "preset"}
    notes.update({f"corpus.{key}": "this corpus, not a published value" for key in corpus})
    notes["preset"] = f"the published setting these values come from (stego_tasks/presets/{name}.yaml)"
    body = defaults_text(folder)
    body = body[_first_key(body):]  # the defaults file's own header is about that file
    text = preset_text(name, folder)
    lines = [f"# {line}" for line in header.splitlines()] + text[: _first_key(text)].splitlines()
    lines.append("# Values without a `preset` comment are the published defaults (stego_tasks/presets/defaults.yaml).")
    return "\n".join(lines) + "\n" + _render(body, values, notes)

