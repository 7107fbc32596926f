"""Tests for the adapters package as `stego adapt` uses it (flows/tools.py on stego_tasks.data.adapters).

Proves that the command adapts a benchmark, prints the corpus params to set and returns 0,
and that an unknown adapter name is refused by the parser. The adapters themselves are
tested in tests/data/adapters/ (one file per module).
"""

from __future__ import annotations

import argparse

import pytest
import yaml

from flows.tools import adapt_from_args, add_adapt_arguments
from tests.data.adapters.layouts import _make_city


def test_cli_prints_params_and_returns_zero(tmp_path, capsys):
    src, dst = _make_city(tmp_path), tmp_path / "corpus"
    parser = argparse.ArgumentParser()
    add_adapt_arguments(parser)
    code = adapt_from_args(parser.parse_args(["cityscapes27", str(src), str(dst)]))
    out = capsys.readouterr().out
    assert code == 0, f"exit code {code}: {out}"
    printed = yaml.safe_load(out[out.index("corpus:"):])
    assert printed["corpus"]["n_classes"] == 27 and printed["corpus"]["class_names"][0] == "road", f"printed {out}"
    assert "linked 4" in out, f"summary line {out}"
    with pytest.raises(SystemExit):
        parser.parse_args(["nope", str(src), str(dst)])
