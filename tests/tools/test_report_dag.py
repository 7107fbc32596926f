"""Tests for `tools.report_dag`: the report's pipeline graph, read from the run's own dvc.yaml.

They prove an edge exists where a dep is, lies inside or around another stage's out, metric or
plot (paths given as strings or as one-key mappings, `${...}` resolved from paths.yaml and the
params, an unresolved one left as written), that implied edges are dropped, that the SVG puts
each stage in the column of its longest path and stacks parallel stages, escaping names, and
that the section says why it is empty for a missing dvc.yaml or one without stages.
"""

from __future__ import annotations

import re

import yaml

from stego_tasks.paths import PATHS
from stego_tasks.tools.report_dag import (
    BOX_H,
    BOX_W,
    GAP_X,
    GAP_Y,
    dag_section,
    dag_svg,
    pipeline_graph,
)
from tests.conftest import REPO

DVC_YAML = """
stages:
  a:
    cmd: x
    outs: ["${paths.manifest}"]
  b:
    cmd: x
    deps: ["${paths.manifest}", "${corpus.root}/images"]
    outs: [out/b]
  c:
    cmd: x
    deps: [out/b/part.json, "${paths.manifest}"]
    metrics: [m/c.json]
  d:
    cmd: x
    deps: [m/c.json]
"""


def _stages(dvc_yaml_text: str) -> dict[str, dict]:
    """A dvc.yaml text's `stages:` mapping, as `params_schema.dvc_stages` hands it to the report."""
    return yaml.safe_load(dvc_yaml_text).get("stages") or {}


def test_the_dag_comes_from_dvc_yaml_with_implied_edges_left_out() -> None:
    names, edges = pipeline_graph(_stages(DVC_YAML), {"corpus": {"root": "out/b"}})
    assert names == ["a", "b", "c", "d"]
    # a -> c is implied by a -> b -> c; b -> c holds twice (a file inside b's out folder).
    assert edges == {("a", "b"), ("b", "c"), ("c", "d")}, f"edges {sorted(edges)}"
    svg = dag_svg(names, edges)
    xs = {name: float(x) for name, x in re.findall(r'<g data-stage="(\w)"><rect x="([\d.]+)"', svg)}
    assert xs["a"] < xs["b"] < xs["c"] < xs["d"], f"columns follow the order: {xs}"
    assert svg.count("<line ") == 3


def test_the_repos_own_pipeline_is_one_chain_from_demo_data_to_report_with_the_weights_check() -> None:
    root = REPO
    names, edges = pipeline_graph(_stages((root / "dvc.yaml").read_text()), yaml.safe_load((root / "params.yaml").read_text()))
    chain = ["demo_data", "ingest", "validate", "extract", "knn", "train", "cluster", "crf", "evaluate", "report"]
    # The checkpoint's content hash (the always-changed `weights` stage) feeds extract alone.
    expected = set(zip(chain[:-1], chain[1:], strict=True)) | {("weights", "extract")}
    assert edges == expected, f"edges {sorted(edges)}"


def _positions(svg: str) -> dict[str, tuple[float, float]]:
    """Each stage box's (x, y) in the SVG."""
    return {name: (float(x), float(y)) for name, x, y in re.findall(r'<g data-stage="([^"]+)"><rect x="([\d.]+)" y="([\d.]+)"', svg)}


def test_deps_given_as_mappings_plots_and_folders_around_an_out_make_edges() -> None:
    text = """
stages:
  write:
    cmd: x
    outs: [{"${paths.features}": {cache: false}}]
    plots: [{plots/curve.csv: {x: step}}]
  read_folder:
    cmd: x
    deps: [artifacts]
  read_plot:
    cmd: x
    deps: [{plots/curve.csv: {}}]
  unrelated:
    cmd: x
    deps: ["${nowhere.key}/x"]
"""
    names, edges = pipeline_graph(_stages(text))
    assert names == ["write", "read_folder", "read_plot", "unrelated"]
    assert PATHS["features"].startswith("artifacts/"), "the test's folder dep must lie around the features store"
    assert edges == {("write", "read_folder"), ("write", "read_plot")}, f"edges {sorted(edges)}"


def test_a_stage_does_not_follow_itself_and_an_empty_file_has_no_stages() -> None:
    names, edges = pipeline_graph(_stages("stages:\n  loop:\n    cmd: x\n    deps: [a]\n    outs: [a]\n"))
    assert (names, edges) == (["loop"], set())
    assert pipeline_graph({}) == ([], set())


def test_parallel_stages_share_a_column_and_stack_in_rows() -> None:
    names = ["src", "left", "right", "join"]
    edges = {("src", "left"), ("src", "right"), ("left", "join"), ("right", "join")}
    svg = dag_svg(names, edges)
    place = _positions(svg)
    step_x, step_y = BOX_W + GAP_X, BOX_H + GAP_Y
    assert place == {"src": (0, 0), "left": (step_x, 0), "right": (step_x, step_y), "join": (2 * step_x, 0)}, place
    assert f'width="{3 * step_x}" height="{2 * step_y}"' in svg
    assert svg.count("<line ") == 4 and svg.startswith('<svg id="dag"') and svg.endswith("</svg>")


def test_a_longer_path_puts_a_stage_in_a_later_column() -> None:
    place = _positions(dag_svg(["a", "b", "c"], {("a", "b"), ("b", "c"), ("a", "c")}))
    assert place["c"][0] == 2 * (BOX_W + GAP_X), place


def test_stage_names_are_escaped_in_the_svg() -> None:
    svg = dag_svg(["<a&b>"], set())
    assert "&lt;a&amp;b&gt;" in svg and "<a&b>" not in svg


def test_the_section_says_why_it_is_empty_and_lists_the_edges_in_words() -> None:
    assert "No dvc.yaml in the run folder: no pipeline to draw." in dag_section(None)
    assert "dvc.yaml declares no stages." in dag_section(_stages("stages: {}\n"))
    section = dag_section(_stages("stages:\n  a:\n    cmd: x\n    outs: [o]\n  b:\n    cmd: x\n    deps: [o]\n"))
    assert section.startswith("<h2>Pipeline</h2><svg") and "From the run's dvc.yaml: a &rarr; b." in section, section


def test_a_params_path_makes_an_edge_only_where_the_params_point_at_an_out() -> None:
    text = "stages:\n  make:\n    cmd: x\n    outs: [data/demo]\n  use:\n    cmd: x\n    deps: [\"${corpus.root}/images\"]\n"
    assert pipeline_graph(_stages(text), {"corpus": {"root": "data/demo"}})[1] == {("make", "use")}
    assert pipeline_graph(_stages(text), {"corpus": {"root": "/data/mine"}})[1] == set()
    assert pipeline_graph(_stages(text))[1] == set(), "an unresolved variable stays as written and matches nothing"
