"""Stage `validate`: Great Expectations checks over the manifest and the label masks.

Three tables are validated, each by its own GX suite:
- manifest (one row per image): ids, hashes and paths unique; paths relative; split in
  {train, val}; width and height at least `min_size`.
- splits (one row per split): train has at least 2 images, val at least 1.
- labels (one row per labelled image, computed here by decoding every mask): label size
  equals image size; every value is in [0, n_classes) or equals ignore_index.

The JSON result (success, per-expectation outcome with the offending file names, counts)
is written atomically before a failure is raised, so it can be inspected either way.
great_expectations is imported inside `validate`: its import alone takes 4 to 7 s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stego_tasks.data.images import DEFAULT_MIN_SIZE, ImageDecodeError, label_fits_uint8, load_label
from stego_tasks.data.manifest import SPLITS, read_manifest, resolve_in_corpus
from stego_tasks.errors import InvalidInputError
from stego_tasks.runtime import atomic

MIN_IMAGES: dict[str, int] = {"train": 2, "val": 1}
N_LISTED = 20  # offending names kept per expectation in the result file
N_IN_MESSAGE = 3  # ... and in the exception message


class ValidationFailed(InvalidInputError):
    """At least one expectation failed; `result` holds the full result dict."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class _Check:
    """One expectation: its name, table, GX class name and arguments, and the fix."""

    name: str
    table: str
    expectation: str
    kwargs: dict[str, Any]
    hint: str


def label_stats(
    manifest: pd.DataFrame, corpus_root: Path, *, n_classes: int, ignore_index: int
) -> tuple[pd.DataFrame, dict[int, int]]:
    """Decode every label mask of the manifest and summarise its values.

    Args:
        manifest: DataFrame from `read_manifest`.
        corpus_root: corpus root the manifest paths are relative to.
        n_classes: valid class values are 0 .. n_classes - 1.
        ignore_index: the value of unlabelled pixels, also valid.

    Returns:
        (stats, value_counts). stats has one row per labelled image with columns
        label_path, label_width, label_height, image_width, image_height, min_value,
        max_value, n_values_out_of_range, max_class_value (largest value other than
        ignore_index, -1 if none); value_counts maps each label value to its pixel count
        over all masks.
    """
    rows, totals = [], {}
    for rec in manifest[manifest["label_path"] != ""].itertuples(index=False):
        try:
            mask = load_label(resolve_in_corpus(corpus_root, rec.label_path))
            too_wide = label_fits_uint8(mask)
        except ImageDecodeError as exc:
            too_wide = exc.reason
        if too_wide:
            # Ingest quarantines such labels; a manifest listing one is stale or not ingest's.
            raise InvalidInputError(
                f"label {rec.label_path} cannot be used ({too_wide}); rerun ingest, which quarantines it."
            )
        values, counts = np.unique(mask, return_counts=True)
        valid = ((values >= 0) & (values < n_classes)) | (values == ignore_index)
        classes = values[values != ignore_index]
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            totals[v] = totals.get(v, 0) + c
        rows.append(
            {
                "label_path": rec.label_path,
                "label_width": int(mask.shape[1]),
                "label_height": int(mask.shape[0]),
                "image_width": int(rec.width),
                "image_height": int(rec.height),
                "min_value": int(values.min()),
                "max_value": int(values.max()),
                "n_values_out_of_range": int(counts[~valid].sum()),
                "max_class_value": int(classes.max()) if classes.size else -1,
            }
        )
    columns = [
        "label_path",
        "label_width",
        "label_height",
        "image_width",
        "image_height",
        "min_value",
        "max_value",
        "n_values_out_of_range",
        "max_class_value",
    ]
    return pd.DataFrame(rows, columns=columns), dict(sorted(totals.items()))


def _split_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    counts = manifest["split"].value_counts()
    return pd.DataFrame(
        {
            "split": list(SPLITS),
            "n_images": [int(counts.get(s, 0)) for s in SPLITS],
            "min_images": [MIN_IMAGES[s] for s in SPLITS],
        }
    )


def _range_hint(value_counts: dict[int, int], n_classes: int, ignore_index: int) -> str:
    """What to change when label values fall outside [0, n_classes) and ignore_index."""
    bad = sorted(v for v in value_counts if not (0 <= v < n_classes or v == ignore_index))
    if not bad:
        return "label values must be in [0, n_classes) or equal to ignore_index"
    hint = f"set corpus.n_classes to at least {bad[-1] + 1} (now {n_classes})"
    if len(bad) == 1:
        hint += (
            f", or corpus.ignore_index to {bad[0]} (now {ignore_index}) if that value marks "
            f"unlabelled pixels"
        )
    return hint + ", or fix those masks"


def _checks(min_size: int, range_hint: str) -> list[_Check]:
    rerun = "rerun the ingest stage, whose manifests satisfy this"
    too_small = f"rerun ingest with min_size {min_size} to quarantine smaller images"
    relabel = "give these masks their image's size, then rerun ingest"
    few = (
        "put at least 2 usable images in images/train and 1 in images/val "
        "(the quarantine list says why files were rejected)"
    )
    unsafe_path = r"^/|(?:^|/)\.\.(?:/|$)"
    table = [
        ("ids_unique", "manifest", "ExpectColumnValuesToBeUnique", {"column": "id"}, rerun),
        ("hashes_unique", "manifest", "ExpectColumnValuesToBeUnique", {"column": "hash"}, rerun),
        ("paths_unique", "manifest", "ExpectColumnValuesToBeUnique", {"column": "path"}, rerun),
        ("paths_relative", "manifest", "ExpectColumnValuesToNotMatchRegex",
         {"column": "path", "regex": unsafe_path}, rerun),
        ("split_known", "manifest", "ExpectColumnValuesToBeInSet",
         {"column": "split", "value_set": list(SPLITS)},
         "images must lie in images/train or images/val"),
        ("width_at_least_min_size", "manifest", "ExpectColumnValuesToBeBetween",
         {"column": "width", "min_value": min_size}, too_small),
        ("height_at_least_min_size", "manifest", "ExpectColumnValuesToBeBetween",
         {"column": "height", "min_value": min_size}, too_small),
        ("split_sizes", "splits", "ExpectColumnPairValuesAToBeGreaterThanB",
         {"column_A": "n_images", "column_B": "min_images", "or_equal": True}, few),
        ("label_width_matches_image", "labels", "ExpectColumnPairValuesToBeEqual",
         {"column_A": "label_width", "column_B": "image_width"}, relabel),
        ("label_height_matches_image", "labels", "ExpectColumnPairValuesToBeEqual",
         {"column_A": "label_height", "column_B": "image_height"}, relabel),
        ("label_values_in_range", "labels", "ExpectColumnValuesToBeBetween",
         {"column": "n_values_out_of_range", "min_value": 0, "max_value": 0}, range_hint),
    ]  # fmt: skip
    return [_Check(*row) for row in table]


_INDEX_COLUMN = {"manifest": "path", "splits": "split", "labels": "label_path"}


def _run_gx(tables: dict[str, pd.DataFrame], checks: list[_Check]) -> list[dict]:
    """Validate each table with its suite; one plain dict per check, in `checks` order."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # tqdm bars per metric would flood the stage log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("stego")
    outcome: dict[str, dict] = {}
    for table, frame in tables.items():
        mine = [c for c in checks if c.table == table]
        suite = gx.ExpectationSuite(name=f"stego_{table}")
        for check in mine:
            expectation_class = getattr(gx.expectations, check.expectation)
            suite.add_expectation(expectation_class(**check.kwargs, meta={"name": check.name}))
        batch = (
            source.add_dataframe_asset(table)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        index = _INDEX_COLUMN[table]
        result = batch.validate(
            suite,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index]},
        )
        for res in result.results:
            details = res.result or {}
            names = [str(row[index]) for row in details.get("unexpected_index_list") or []]
            outcome[res.expectation_config.meta["name"]] = {
                "expectation": res.expectation_config.type,
                "success": bool(res.success),
                "unexpected_count": int(details.get("unexpected_count") or 0),
                "unexpected": names[:N_LISTED],
                "error": str(res.exception_info.get("exception_message") or "")
                if not res.success and isinstance(res.exception_info, dict)
                else "",
            }
    return [
        {"name": c.name, "table": c.table, **outcome[c.name], "hint": c.hint}
        for c in checks
        if c.name in outcome
    ]


def _failure_message(manifest_path: Path, result_path: Path, failed: list[dict]) -> str:
    parts = []
    for f in failed:
        shown = ", ".join(f["unexpected"][:N_IN_MESSAGE])
        more = ", ..." if f["unexpected_count"] > N_IN_MESSAGE else ""
        where = f" ({f['unexpected_count']} failing: {shown}{more})" if shown else ""
        if f["error"]:
            where += f" (GX error: {f['error']})"
        parts.append(f"{f['name']}{where}: {f['hint']}")
    return (
        f"validation of {manifest_path} failed: "
        + "; ".join(parts)
        + f". Full result in {result_path}."
    )


def validate(
    manifest_path: Path,
    corpus_root: Path,
    result_path: Path,
    *,
    n_classes: int,
    ignore_index: int,
    min_size: int = DEFAULT_MIN_SIZE,
) -> dict:
    """Check the manifest and the label masks with Great Expectations.

    Args:
        manifest_path: Parquet manifest written by `ingest`.
        corpus_root: corpus root the manifest paths are relative to.
        result_path: JSON result output (written atomically, also when checks fail).
        n_classes: number of classes; label values 0 .. n_classes - 1 are valid.
        ignore_index: the label value of unlabelled pixels (e.g. 255, or 11 for CamVid),
            outside [0, n_classes).
        min_size: smallest allowed image width and height.

    Returns:
        The result dict also written to `result_path`: success, params, counts
        (images per split, labelled images, pixel count per label value) and
        expectations (name, table, expectation, success, unexpected_count, unexpected
        file names, error from GX if it could not evaluate the check, hint). The label
        checks are left out when no image has a label.

    Raises:
        ValueError: n_classes < 1 or ignore_index inside [0, n_classes).
        ValidationFailed: an expectation failed; the message names it, the first
            offending files and the fix.
    """
    if n_classes < 1:
        raise InvalidInputError(f"n_classes must be at least 1, got {n_classes}.")
    if 0 <= ignore_index < n_classes:
        raise InvalidInputError(
            f"ignore_index {ignore_index} is a class index when n_classes is {n_classes}; "
            f"use a value >= n_classes (e.g. 255) for unlabelled pixels."
        )
    manifest = read_manifest(manifest_path)
    labels, value_counts = label_stats(
        manifest, Path(corpus_root), n_classes=n_classes, ignore_index=ignore_index
    )
    splits = _split_counts(manifest)
    tables = {"manifest": manifest, "splits": splits}
    if not labels.empty:  # an unlabelled corpus is normal for unsupervised training
        tables["labels"] = labels
    checks = _checks(min_size, _range_hint(value_counts, n_classes, ignore_index))
    expectations = _run_gx(tables, checks)
    failed = [e for e in expectations if not e["success"]]
    result = {
        "success": not failed,
        "manifest": str(manifest_path),
        "corpus_root": str(corpus_root),
        "params": {"n_classes": n_classes, "ignore_index": ignore_index, "min_size": min_size},
        "counts": {
            "n_images": dict(
                zip(splits["split"], splits["n_images"].astype(int).tolist(), strict=True)
            ),
            "n_labelled": len(labels),
            "label_value_counts": {str(k): v for k, v in value_counts.items()},
        },
        "expectations": expectations,
    }
    with atomic.atomic_path(Path(result_path)) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    if failed:
        raise ValidationFailed(
            _failure_message(Path(manifest_path), Path(result_path), failed), result
        )
    return result
