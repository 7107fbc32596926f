"""`stego names init`: a starting names file for a finished run, from its gallery and its labels.

Apart from `cluster_names` (the names file's format) and `gallery` (the gallery's), which it
joins: the gallery shows the names, so neither of those two may import the other's reader.
"""

from __future__ import annotations

from pathlib import Path

from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.paths import PATHS, run_path
from stego_tasks.runtime import atomic
from stego_tasks.tools.cluster_names import init_text, load_names
from stego_tasks.tools.gallery import GALLERY_JSON


def write_init(run_dir: Path, out: Path, force: bool = False) -> dict:
    """Write a starting names file for the run in `run_dir` (`stego names init`).

    Reads the gallery (every cluster and its size) and, when the run had labels, the
    assignment (each cluster's matched class becomes its suggested name).

    Returns:
        {"out", "clusters", "suggested": how many names came from the labels}.

    Raises:
        FileNotFoundError: the run has no gallery yet.
        ValueError: `out` already names or ignores clusters (or cannot be read) and `force` is off.
    """
    gallery = run_path(run_dir, "gallery") / GALLERY_JSON
    if not gallery.is_file():
        raise MissingInputError(f"{run_dir} has no {PATHS['gallery']}/{GALLERY_JSON}; run `dvc repro` "
                                "(its evaluate stage writes it) before `stego names init`.")
    clusters = atomic.read_json_object(gallery, "evaluate", "rerun `stego evaluate`").get("clusters")
    if not isinstance(clusters, list) or not clusters or not all(isinstance(entry, dict) for entry in clusters):
        raise InvalidInputError(f"{gallery}: `clusters` must list one mapping per cluster, as evaluate writes it; "
                                "rerun `stego evaluate`.")
    out = Path(out)
    if out.exists() and not force:
        try:
            existing = load_names(out, len(clusters))
        except ValueError:
            existing = None
        if existing is None or not existing.is_empty:
            raise InvalidInputError(f"{out} already names clusters; edit it, or pass --force to replace it with a fresh one.")
    suggested: list[str | None] = [None] * len(clusters)
    assignment = run_path(run_dir, "assignment")
    if assignment.is_file():
        data = atomic.read_json_object(assignment, "evaluate", "rerun `stego evaluate`")
        mapping, class_names = data.get("cluster_to_class"), data.get("class_names") or []
        if isinstance(mapping, list) and len(mapping) == len(clusters) and isinstance(class_names, list):
            suggested = [class_names[c] if isinstance(c, int) and 0 <= c < len(class_names)
                         and isinstance(class_names[c], str) else None for c in mapping]
    atomic.write_text(out, init_text(clusters, suggested))
    return {"out": str(out), "clusters": len(clusters), "suggested": sum(s is not None for s in suggested)}
