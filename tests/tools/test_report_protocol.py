"""Tests for `tools.report_protocol`: the report's sections on how a run was made.

From scores, shift statistics and seeds files written in tmp_path, they prove the protocol table
names the preset, weights, preprocessing, probe init and checkpoint choice (saying when the
choice used labels) with "not recorded" for what the run did not write, adds the shifts and the
last / best / refit selection table only when best-checkpoint selection ran, that the shift
section shows the train stage's quantiles per pair type or says it is missing, and that the
seeds section shows mean ± sd per method only after `stego seeds`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from stego_tasks.method.shift_stats import correlation_stats
from stego_tasks.tools.report_protocol import (
    SEEDS,
    SHIFT_STATS,
    protocol_section,
    seeds_section,
    shift_section,
)


def _facts(section: str) -> dict[str, str]:
    """The protocol table as {label: value}."""
    table = section[section.index('<table id="protocol">'):section.index("</table>")]
    return dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", table))


def test_a_run_that_recorded_nothing_says_so_fact_by_fact() -> None:
    facts = _facts(protocol_section(None))
    assert facts == {"preset": "not recorded", "weights source": "not recorded", "preprocessing": "not recorded",
                     "cluster probe": "not recorded", "checkpoint": "last step (no labels used)"}, facts


def test_the_recorded_protocol_is_shown_and_best_selection_says_it_used_labels() -> None:
    scores = {"preset": "cocostuff27_vits8", "backbone_weights": "file:w.pth", "preprocess": "reference",
              "protocol": {"probe_init": "codes", "select": "best", "shifts": [0.18, 0.12, 1.0], "shifts_setting": "auto"}}
    facts = _facts(protocol_section(scores))
    assert facts["preset"] == "cocostuff27_vits8" and facts["weights source"] == "file:w.pth"
    assert facts["preprocessing"] == "reference" and facts["cluster probe"].startswith("refitted on the final codes")
    assert facts["checkpoint"] == "best by val cluster mIoU: this choice USED LABELS"
    assert facts["shifts"] == "0.18, 0.12, 1.00 (auto)", facts["shifts"]
    assert 'id="selection"' not in protocol_section(scores), "no selection record: no selection table"


def test_the_selection_table_compares_last_best_and_refit_only_for_best() -> None:
    selection = {"last": {"step": 100, "accuracy": 50.0, "miou": 20.0}, "best": {"step": 60, "accuracy": 55.5, "miou": 25.25},
                 "refit": {"accuracy": 56.0, "miou": 26.0}}
    section = protocol_section({"protocol": {"select": "best", "selection": selection}})
    rows = re.findall(r'<tr data-selection="(\w+)"><th>[^<]*</th><td class="num">([^<]*)</td>'
                      r'<td class="num">([^<]*)</td><td class="num">([^<]*)</td></tr>', section)
    assert rows == [("last", "100", "50.00", "20.00"), ("best", "60", "55.50", "25.25"), ("refit", "60", "56.00", "26.00")], rows
    assert 'id="selection"' not in protocol_section({"protocol": {"select": "last", "selection": selection}})


def test_values_are_escaped() -> None:
    assert "&lt;script&gt;" in protocol_section({"preset": "<script>"})


def test_the_shift_section_shows_each_pair_types_quantiles_and_the_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = {"intra": rng.uniform(0.2, 0.9, 400), "inter": rng.uniform(0.0, 0.6, 400), "neg": rng.uniform(-0.4, 0.2, 400)}
    stats = correlation_stats(samples, [0.5, 0.3, 0.0])
    path = tmp_path / SHIFT_STATS
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stats))
    section = shift_section(tmp_path)
    assert '<img src="data:image/png;base64,' in section
    for term, shift in (("intra", 0.5), ("inter", 0.3), ("neg", 0.0)):
        row = re.search(rf'<tr data-term="{term}">(.*?)</tr>', section).group(1)
        cells = re.findall(r'<td class="num">([^<]*)</td>', row)
        median = np.quantile(samples[term], 0.5)
        attract = 100 * (samples[term] > shift).mean()
        assert cells[0] == f"{shift:.2f}" and cells[2] == f"{median:.2f}" and cells[4] == f"{attract:.2f}", (term, cells)


def test_the_shift_section_says_when_the_train_stage_has_not_run(tmp_path: Path) -> None:
    assert f"No shift diagnostics: {SHIFT_STATS} is missing" in shift_section(tmp_path)
    path = tmp_path / SHIFT_STATS
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"terms": []}))
    assert "No shift diagnostics" in shift_section(tmp_path), "a file without terms counts as missing"


def test_seeds_show_mean_and_sd_per_method_only_after_stego_seeds(tmp_path: Path) -> None:
    assert seeds_section(tmp_path) == ""
    path = tmp_path / SEEDS
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"seeds": [0, 1], "methods": {
        "cluster": {"accuracy": {"mean": 60.0, "sd": 1.5}, "miou": {"mean": 30.25, "sd": 0.5}},
        "linear": {"accuracy": {"mean": 45.0, "sd": None}}}}))
    section = seeds_section(tmp_path)
    assert "seeds 0, 1 (stego seeds)" in section
    rows = dict(re.findall(r'<tr data-method="(\w+)">(.*?)</tr>', section))
    assert re.findall(r'<td class="num">([^<]*)</td>', rows["cluster"]) == ["60.00 ± 1.50", "30.25 ± 0.50"]
    assert re.findall(r'<td class="num">([^<]*)</td>', rows["linear"]) == ["45.00 ± \u2013", "\u2013 ± \u2013"]
