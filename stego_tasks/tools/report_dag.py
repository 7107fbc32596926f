"""The pipeline's DAG for the report, drawn as inline SVG from the run's own `dvc.yaml`.

A stage B follows stage A when one of B's deps is one of A's outputs (outs, metrics or
plots), or lies inside or around it: the graph `dvc dag` draws. `${paths.<name>}` is read from
`stego_tasks/paths.yaml` and any other `${block.key}` from the run's params, as DVC reads them. Edges implied by a longer path are left out, so the
picture shows the pipeline's shape rather than every file it passes.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from stego_tasks.paths import PATHS

_VAR = re.compile(r"\$\{([\w.]+)\}")
BOX_W, BOX_H, GAP_X, GAP_Y = 110, 26, 40, 14


def _value(dotted: str, variables: dict[str, Any]) -> str | None:
    value: Any = variables
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def _entries(items: list[Any] | None, variables: dict[str, Any]) -> list[str]:
    """Paths of a deps/outs list (strings, or one-key mappings of a path to its options), variables resolved."""
    found = []
    for item in items or []:
        found += [item] if isinstance(item, str) else list(item)
    return [_VAR.sub(lambda m: _value(m.group(1), variables) or m.group(0), path) for path in found]


def _touches(dep: str, out: str) -> bool:
    return dep == out or dep.startswith(f"{out}/") or out.startswith(f"{dep}/")


def pipeline_graph(stages: dict[str, dict], params: dict[str, Any] | None = None) -> tuple[list[str], set[tuple[str, str]]]:
    """(stage names in file order, edges (upstream, downstream) with implied edges removed).

    Args:
        stages: the run's dvc.yaml `stages:` mapping (`params_schema.dvc_stages` reads and checks it).
        params: the run's params mapping, for `${block.key}` paths such as `${corpus.root}`.
    """
    variables = {**(params or {}), "paths": dict(PATHS)}
    outs = {name: sum((_entries(s.get(kind), variables) for kind in ("outs", "metrics", "plots")), [])
            for name, s in stages.items()}
    edges = {(up, down) for down, spec in stages.items() for dep in _entries(spec.get("deps"), variables)
             for up, written in outs.items() if up != down and any(_touches(dep, out) for out in written)}

    def reaches(start: str, goal: str, skip: tuple[str, str]) -> bool:
        todo, seen = [start], set()
        while todo:
            node = todo.pop()
            for edge in edges:
                if edge != skip and edge[0] == node and edge[1] not in seen:
                    if edge[1] == goal:
                        return True
                    seen.add(edge[1])
                    todo.append(edge[1])
        return False

    return list(stages), {edge for edge in edges if not reaches(edge[0], edge[1], edge)}


def dag_svg(names: list[str], edges: set[tuple[str, str]]) -> str:
    """An inline SVG: one column per depth (longest path from a source), arrows between boxes."""
    depth: dict[str, int] = {}
    for _ in names:  # longest-path layering; the graph is acyclic and small
        for name in names:
            depth[name] = max([depth.get(up, 0) + 1 for up, down in edges if down == name] or [0])
    rows: dict[int, list[str]] = {}
    for name in names:
        rows.setdefault(depth[name], []).append(name)
    place = {name: (column * (BOX_W + GAP_X), row * (BOX_H + GAP_Y))
             for column, members in rows.items() for row, name in enumerate(members)}
    width = (max(rows) + 1) * (BOX_W + GAP_X)
    height = max(len(members) for members in rows.values()) * (BOX_H + GAP_Y)
    lines = [f'<line x1="{place[a][0] + BOX_W}" y1="{place[a][1] + BOX_H / 2}" x2="{place[b][0]}" '
             f'y2="{place[b][1] + BOX_H / 2}" stroke="#5a6470" marker-end="url(#arrow)"/>' for a, b in sorted(edges)]
    boxes = [f'<g data-stage="{escape(n)}"><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" '
             f'fill="#f1f4f8" stroke="#2f6fbf"/><text x="{x + BOX_W / 2}" y="{y + 17}" text-anchor="middle" '
             f'font-size="12">{escape(n)}</text></g>' for n, (x, y) in place.items()]
    marker = ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
              'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#5a6470"/></marker></defs>')
    return (f'<svg id="dag" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto" role="img" aria-label="pipeline stages and their order">'
            + marker + "".join(lines) + "".join(boxes) + "</svg>")


def dag_section(stages: dict[str, dict] | None, params: dict[str, Any] | None = None) -> str:
    """The report's pipeline section: the DAG and its edges in words (`stages` None: no dvc.yaml; as `pipeline_graph`)."""
    head = "<h2>Pipeline</h2>"
    if stages is None:
        return head + '<p class="note">No dvc.yaml in the run folder: no pipeline to draw.</p>'
    names, edges = pipeline_graph(stages, params)
    if not names:
        return head + '<p class="note">dvc.yaml declares no stages.</p>'
    words = "; ".join(f"{a} &rarr; {b}" for a, b in sorted(edges))
    return head + dag_svg(names, edges) + f'<p class="note">From the run\'s dvc.yaml: {words}.</p>'
