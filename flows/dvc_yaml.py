"""`dvc.yaml`, generated from the stage registry (`flows/registry.py`): `python -m flows.dvc_yaml`.

DVC and its users read `dvc.yaml`, so it stays a committed file; this writes it, and
`tests/flows/test_dvc_yaml.py` fails when the committed file differs from what this makes. Per
stage: the command (the stage function's path parameters as `${paths.<key>}`, then its
trace), the deps (the stage function's file, the paths it reads, then its code: the import
closure of its library module, `flows/code_deps.py`), its params keys, and its outs,
metrics and plots with their flags.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flows.code_deps import REPO, code_deps
from flows.registry import STAGES, Stage

HEADER = """\
# Generated from flows/registry.py by `python -m flows.dvc_yaml`: edit the registry, not this file.
# Artifact paths are declared once, in stego_tasks/paths.yaml (read here through `vars`, and by
# the `stego` commands for their defaults); each cmd passes them to `stego <stage>`.
vars:
  - stego_tasks/paths.yaml

plots:
  # `dvc plots show` draws these from data; `dvc plots diff EXP1 EXP2` draws two runs side by side.
  - ${paths.confusion_data}:
      template: confusion
      x: predicted
      y: actual
      title: Confusion, cluster probe + CRF (rows per 10,000 labelled validation pixels)
  - ${paths.per_class_plot}:
      template: bar_horizontal
      x: cluster_crf
      y: class
      title: Per-class IoU, cluster probe + CRF
  - ${paths.loss_log}:
      x: step
      y: [total, intra, inter, neg, cluster, linear]
      title: Training losses
  - ${paths.shift_stats}:
      x: correlation
      y: share
      title: Feature correlations per pair type (the shifts are marked in the report)

stages:
"""
STAGE_FUNCTIONS = "flows/stage_functions.py"
COMMENTS = {
    STAGE_FUNCTIONS: "which params and paths reach the library",
    "trace": "what the run cost (stego_tasks/runtime/trace.py)",
    "traces": "the other stages' traces: the timeline and resource table",
}


def command(stage: Stage) -> str:
    """The stage's `stego` command line, with `${paths.<key>}` for every path it is given."""
    words = ["stego", stage.command] + (["--no-prefect"] if stage.always_changed else [])
    paths = stage.path_params()
    for name in stage.options():
        value = f"${{paths.{paths[name]}}}" if name in paths else stage.fixed.get(name)
        if value is None:
            continue
        words += [value] if name == stage.positional else [f"--{name.replace('_', '-')}", value]
    if stage.traced:
        words += ["--trace", f"${{paths.trace}}/{stage.name}.json"]
    return " ".join(words)


def data_deps(stage: Stage, stages: Mapping[str, Stage]) -> list[str]:
    """The files and folders the stage reads: its declared deps, the paths it is given and does not write, traces."""
    given = [f"${{paths.{key}}}" for key in stage.path_params().values() if key not in stage.written()]
    deps = [dep for dep in given if dep not in stage.deps] + list(stage.deps)
    if stage.reads_traces:
        before = list(stages)[: list(stages).index(stage.name)]
        deps[-1:-1] = [f"${{paths.trace}}/{name}.json" for name in before if stages[name].traced]
    return deps


def _command_lines(cmd: str, width: int = 100) -> list[str]:
    """`cmd: ...` on one line, or folded (`>-`, read back as one line) over several when long."""
    if len(cmd) <= width:
        return [f"    cmd: {cmd}"]
    lines = [""]
    for word in cmd.split():
        lines[-1:] = [f"{lines[-1]} {word}".strip()] if len(lines[-1]) + len(word) < width else [lines[-1], word]
    return ["    cmd: >-", *(f"      {line}" for line in lines)]


def _entry(text: str, comment: str | None, indent: int = 6) -> str:
    line = f"{' ' * indent}- {text}"
    return f"{line}   # {comment}" if comment else line


def _outputs(kind: str, outputs: Mapping[str, Mapping[str, Any]], stage: Stage, extra: list[str]) -> list[str]:
    lines = []
    for key, flags in outputs.items():
        path = f"${{paths.{key}}}"
        lines.append(_entry(path + (":" if flags else ""), stage.comments.get(path)))
        lines += [f"          {flag}: {str(value).lower()}" for flag, value in flags.items()]
    lines += extra
    return [f"    {kind}:", *lines] if lines else []


def stage_text(stage: Stage, stages: Mapping[str, Stage] = STAGES, repo: Path = REPO) -> str:
    """One stage of `dvc.yaml`, as text (comments included)."""
    lines = [f"  {stage.name}:"]
    if "cmd" in stage.comments:
        lines += [f"    # {line}" for line in stage.comments["cmd"].splitlines()]
    lines += _command_lines(command(stage))
    if stage.always_changed:
        lines.append("    always_changed: true")
    lines += ["    deps:", _entry(STAGE_FUNCTIONS, COMMENTS[STAGE_FUNCTIONS])]
    traces = [dep for dep in data_deps(stage, stages) if dep.startswith("${paths.trace}/")]
    for dep in data_deps(stage, stages):
        comment = stage.comments.get(dep) or (COMMENTS["traces"] if traces and dep == traces[0] else None)
        lines.append(_entry(dep, comment))
    lines += [_entry(dep, None) for dep in code_deps(stage.module, repo)]
    if stage.params:
        lines += ["    params:", *(_entry(key, stage.comments.get(key)) for key in stage.params)]
    trace = [_entry(f"${{paths.trace}}/{stage.name}.json:", COMMENTS["trace"]), "          cache: false"]
    lines += _outputs("outs", stage.outs, stage, [])
    lines += _outputs("metrics", stage.metrics, stage, trace if stage.traced else [])
    lines += _outputs("plots", stage.plots, stage, [])
    return "\n".join(lines) + "\n"


def dvc_yaml(stages: Mapping[str, Stage] = STAGES, repo: Path = REPO) -> str:
    """The whole `dvc.yaml` of `stages`."""
    return HEADER + "\n".join(stage_text(stage, stages, repo) for stage in stages.values())


def main(argv: list[str] | None = None) -> int:
    """Write dvc.yaml (`--check`: only say whether the committed one is current; exit status 1 if not)."""
    argv = sys.argv[1:] if argv is None else argv
    path, text = REPO / "dvc.yaml", dvc_yaml()
    if "--check" in argv:
        current = path.read_text(encoding="utf-8") == text
        print("dvc.yaml is current" if current else "dvc.yaml differs from the registry: run python -m flows.dvc_yaml")
        return 0 if current else 1
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
