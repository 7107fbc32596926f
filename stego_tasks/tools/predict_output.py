"""The output folder of `stego predict`: where each image's files go, and the rules for rewriting it.

`legend.json` is the folder's record: which command and run wrote it and the files it wrote.
A second predict into the same folder replaces the first one's files completely (and nothing
else); a folder holding files predict did not write, or an output folder inside an input
folder (predict would read its own outputs), is refused. Files are moved in from a staging
folder only when a run is done, with legend.json listing old and new files while they move.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path, PurePosixPath

from stego_tasks.errors import InvalidInputError
from stego_tasks.method.model import MODEL_WEIGHTS
from stego_tasks.runtime import atomic
from stego_tasks.tools.trained_run import UNMATCHED, Run
from stego_tasks.tools.visualize import palette

# legend.json's `written_by`: marks a folder this command wrote (and may rewrite).
WRITER = "stego predict"
# The output folder's record (which run and command wrote it, its files); `stego export` reads it.
LEGEND = "legend.json"
# What `stego predict` writes per image: <stem> + each suffix (`stego export` reads the clusters).
CLUSTERS_PNG, OVERLAY_PNG, CLASSES_PNG, NAMED_PNG = "_clusters.png", "_overlay.png", "_classes.png", "_named.png"
OUTPUT_SUFFIXES = (CLUSTERS_PNG, OVERLAY_PNG, CLASSES_PNG, NAMED_PNG)


def output_keys(images: list[tuple[Path, Path]]) -> list[Path]:
    """One unique output stem per image, keeping relative sub-paths.

    An image's key is its path relative to its input without the extension. Keys that
    clash (the same name under two inputs) are taken relative to the clashing files'
    common folder instead; a remaining clash (x.jpg beside x.png) adds the extension, and
    as a last resort a counter.

    Args:
        images: (path, relative path) pairs from `collect_images`.

    Returns:
        Relative paths without suffix, e.g. Path("street/img_001"), one per image.
    """
    keys = [rel.with_suffix("") for _, rel in images]
    clashes = [k for k, n in Counter(keys).items() if n > 1]
    for key in clashes:
        members = [i for i, k in enumerate(keys) if k == key]
        parents = [str(images[i][0].resolve().parent) for i in members]
        common = Path(os.path.commonpath(parents))
        for i in members:
            keys[i] = images[i][0].resolve().relative_to(common).with_suffix("")
    for key in [k for k, n in Counter(keys).items() if n > 1]:
        for i in (i for i, k in enumerate(keys) if k == key):
            keys[i] = key.with_name(f"{key.name}_{images[i][0].suffix.lstrip('.').lower()}")
    seen: set[Path] = set()
    for i, key in enumerate(keys):
        unique, n = key, 1
        while unique in seen:
            n += 1
            unique = key.with_name(f"{key.name}_{n}")
        keys[i] = unique
        seen.add(unique)
    return keys


def legend(run: Run) -> dict:
    """Index -> name and colour for clusters (and classes), as written to legend.json."""
    colours = palette()
    mapping = run.cluster_to_class
    clusters = {
        str(i): {
            "colour": colours[i].tolist(),
            "class": None if mapping is None or mapping[i] < 0 else int(mapping[i]),
        }
        for i in range(run.n_clusters)
    }
    classes = None
    if mapping is not None:
        classes = {str(j): {"name": name, "colour": colours[j].tolist()} for j, name in enumerate(run.class_names)}
        classes[str(UNMATCHED)] = {"name": "unmatched", "colour": [0, 0, 0]}
    named = None
    if run.names is not None:
        named = {
            str(j): {"name": name, "colour": colours[j].tolist(), "clusters": members}
            for j, (name, members) in enumerate(run.names.classes_of().items())
        }
        named[str(UNMATCHED)] = {"name": "ignored", "colour": [0, 0, 0], "clusters": sorted(run.names.ignore)}
        for cluster, entry in clusters.items():
            entry["name"] = run.names.label(int(cluster))
    return {
        "clusters": clusters,
        "classes": classes,
        "named": named,
        "backbone": run.model.info.get("backbone"),
        "backbone_weights": run.backbone.weights_source,
        "resolution": run.resolution,
    }


def _is_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def previous_outputs(out_dir: Path) -> list[str] | None:
    """The files an earlier `stego predict` wrote into `out_dir`, or None when predict did not write it.

    Read from its legend.json (`written_by` and `files`); a legend.json of a predict
    version that did not list its files stands for the files named like predict's outputs.

    Args:
        out_dir: an existing folder.

    Returns:
        Paths relative to `out_dir` (POSIX), or None.
    """
    try:
        data = json.loads((out_dir / LEGEND).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("written_by") == WRITER and isinstance(data.get("files"), list):
        names = [PurePosixPath(name) for name in data["files"] if isinstance(name, str) and name]
        return [str(name) for name in names if not name.is_absolute() and ".." not in name.parts]
    if {"clusters", "classes", "backbone", "resolution"} <= set(data):  # legend.json without a file list
        return sorted(
            path.relative_to(out_dir).as_posix()
            for path in out_dir.rglob("*")
            if path.is_file() and path.name.endswith(OUTPUT_SUFFIXES)
        )
    return None


def check_out_dir(inputs: list[Path], out_dir: Path) -> list[str]:
    """Refuse an output folder predict may not write; return the files an earlier predict left in it.

    Args:
        inputs: the image files and folders to segment.
        out_dir: the output folder.

    Returns:
        The previous predict run's files in `out_dir` (relative paths), [] for a new or
        empty folder.

    Raises:
        ValueError: one sentence: `out_dir` is a file, is or lies inside an input folder,
            holds an input, or holds files that predict did not write.
    """
    out_dir = Path(out_dir)
    out_resolved = out_dir.resolve()
    for item in map(Path, inputs):
        resolved = item.resolve()
        if item.is_dir() and _is_inside(out_resolved, resolved):
            raise InvalidInputError(
                f"--out {out_dir} is inside the input folder {item}, so predict would read its own outputs as "
                "images next time; pass an --out folder outside every input."
            )
        if _is_inside(resolved, out_resolved):
            raise InvalidInputError(
                f"the input {item} lies inside --out {out_dir}, so predict would segment its own outputs; "
                "pass an --out folder outside every input."
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} is a file, not a folder; pass a folder (new, empty, or an earlier predict's).")
    if not out_dir.is_dir():
        return []
    previous = previous_outputs(out_dir)
    if previous is None:
        if any(out_dir.iterdir()):
            raise InvalidInputError(
                f"--out {out_dir} already holds files that stego predict did not write (it has no predict "
                "legend.json); pass a new or empty folder."
            )
        return []
    return previous


def model_digest(run: Run) -> str | None:
    path = run.model_dir / MODEL_WEIGHTS if run.model_dir is not None else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _remove_file(out_dir: Path, relative: str) -> None:
    """Delete one file an earlier predict wrote, and the sub-folders that leaves empty."""
    path = out_dir / relative
    if path.is_file() or path.is_symlink():
        path.unlink()
    parent = path.parent
    while parent != out_dir and _is_inside(parent, out_dir) and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def publish(staging: Path, out_dir: Path, previous: list[str], record: dict) -> list[str]:
    """Move the finished outputs from `staging` into `out_dir`, replacing the previous run's files.

    While files move, legend.json lists the old and the new ones (`complete: false`), so
    a run killed half-way leaves a folder that the next run clears completely.
    """
    written = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / LEGEND, {**record, "complete": False, "files": sorted(set(previous) | set(written))})
    for relative in sorted(set(previous) - set(written)):
        _remove_file(out_dir, relative)
    for relative in written:
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target)
    atomic.write_json(out_dir / LEGEND, {**record, "complete": True, "files": written})
    return written
