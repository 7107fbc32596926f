"""The names file (`cluster_names.yaml`): the user's names for a run's clusters, merges and ignores.

    names:            # cluster id: name; several ids with one name are merged into one class
      0: road
      3: vegetation
      5: vegetation
    ignore: [7]       # clusters left out of named maps and exports (written as 255)

A cluster neither named nor ignored keeps a class of its own, named `cluster <id>`. Classes
are numbered in the order of their lowest cluster id, so the same file always gives the same
class maps. The file is a DVC dependency of `evaluate` (and through its gallery of the
report); `stego predict` and `stego export` read it from the run folder. `stego names init`
writes a starting file from a run: every cluster with its size, named after the class the
labels matched it to when the run had labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stego_tasks.errors import InvalidInputError
from stego_tasks.params_schema import read_yaml

IGNORED = 255  # class value of ignored clusters in named maps (the corpus layout's usual ignore index)
KEYS = ("names", "ignore")
FIX = "fix it or write a fresh one with `stego names init --force`"


def default_name(cluster: int) -> str:
    """The name of a cluster the file does not name."""
    return f"cluster {cluster}"


@dataclass(frozen=True)
class ClusterNames:
    """A run's names file, checked against its number of clusters.

    Attributes:
        n_clusters: clusters of the run's cluster probe.
        names: {cluster id: name} for the named clusters.
        ignore: cluster ids left out.
        source: the file it was read from (for messages), or None.
    """

    n_clusters: int
    names: dict[int, str] = field(default_factory=dict)
    ignore: frozenset[int] = frozenset()
    source: str | None = None

    @property
    def is_empty(self) -> bool:
        """True when the file names and ignores nothing (every cluster keeps its id)."""
        return not self.names and not self.ignore

    def label(self, cluster: int) -> str:
        """The display name of a cluster: its name, `cluster <id>`, or `ignored`."""
        return "ignored" if cluster in self.ignore else self.names.get(cluster, default_name(cluster))

    def class_names(self) -> tuple[str, ...]:
        """One name per class, classes in the order of their lowest cluster id."""
        ordered: list[str] = []
        for cluster in range(self.n_clusters):
            name = self.label(cluster)
            if cluster not in self.ignore and name not in ordered:
                ordered.append(name)
        return tuple(ordered)

    def cluster_to_class(self) -> np.ndarray:
        """int64 [n_clusters]: the class of each cluster, `IGNORED` (255) for ignored clusters."""
        classes = {name: index for index, name in enumerate(self.class_names())}
        return np.array(
            [IGNORED if c in self.ignore else classes[self.label(c)] for c in range(self.n_clusters)], dtype=np.int64
        )

    def classes_of(self) -> dict[str, list[int]]:
        """{class name: its cluster ids}, classes in order."""
        mapping = self.cluster_to_class()
        return {name: [int(c) for c in np.flatnonzero(mapping == j)] for j, name in enumerate(self.class_names())}


def _cluster_id(value: object, n_clusters: int, path: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{path}: {where} {value!r} is not a cluster id (an integer); {FIX}.")
    if not 0 <= value < n_clusters:
        raise InvalidInputError(
            f"{path}: {where} {value} is not a cluster of this run (ids 0..{n_clusters - 1}); "
            f"remove it, or {FIX.split(' or ', 1)[1]}."
        )
    return value


def parse_names(data: object, n_clusters: int, path: Path) -> ClusterNames:
    """Check a parsed names file against the run's `n_clusters`.

    Raises:
        ValueError: one sentence naming `path`: not a mapping, an unknown key, an id that is
            not an integer or not a cluster of the run, a name that is not text, an id named
            and ignored, or an id listed twice under `ignore`.
    """
    if data is None:
        return ClusterNames(n_clusters, source=str(path))
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must hold a mapping with `names:` and `ignore:`, not {type(data).__name__}; {FIX}.")
    unknown = sorted(str(key) for key in data if key not in KEYS)
    if unknown:
        raise InvalidInputError(f"{path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(KEYS)}); {FIX}.")
    raw_names = data.get("names") or {}
    raw_ignore = data.get("ignore") or []
    if not isinstance(raw_names, dict):
        raise InvalidInputError(f"{path}: `names` must map cluster ids to names (e.g. `3: road`); {FIX}.")
    if not isinstance(raw_ignore, list):
        raise InvalidInputError(f"{path}: `ignore` must be a list of cluster ids (e.g. `[7, 9]`); {FIX}.")
    names: dict[int, str] = {}
    for key, value in raw_names.items():
        cluster = _cluster_id(key, n_clusters, path, "names: id")
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(
                f"{path}: the name of cluster {cluster} is {value!r}, not text; write it in quotes (e.g. `{cluster}: \"road\"`)."
            )
        names[cluster] = value.strip()
    ignore: set[int] = set()
    for value in raw_ignore:
        cluster = _cluster_id(value, n_clusters, path, "ignore: id")
        if cluster in ignore:
            raise InvalidInputError(f"{path}: cluster {cluster} is listed twice under `ignore`; keep one.")
        if cluster in names:
            raise InvalidInputError(f"{path}: cluster {cluster} is both named ({names[cluster]!r}) and ignored; keep one of them.")
        ignore.add(cluster)
    return ClusterNames(n_clusters, names, frozenset(ignore), str(path))


def load_names(path: Path, n_clusters: int) -> ClusterNames:
    """Read and check a names file; a missing file names nothing.

    Raises:
        ValueError: as `parse_names`, or a folder / malformed YAML / a key given twice (one sentence).
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder, not a names file; pass a YAML file such as cluster_names.yaml.")
    if not path.exists():
        return ClusterNames(n_clusters, source=str(path))
    return parse_names(read_yaml(path), n_clusters, path)


def _percent(value: object) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, int | float) else "?"


def init_text(clusters: list[dict], suggested: list[str | None]) -> str:
    """The text of a starting names file.

    Args:
        clusters: one dict per cluster id in order, with `pixel_share`, `image_share`
            (0..1, or missing) and `n_images` / `images_with` where known (the gallery's entries).
        suggested: per cluster, the class the labels matched it to, or None.

    Returns:
        YAML text: every cluster named (its suggestion or `cluster <id>`), with its size as a comment.
    """
    lines = [
        "# Names of this run's clusters (written by `stego names init`; edit freely, it is versioned).",
        "# Name a cluster, give several clusters one name to merge them, list clusters to leave out",
        "# under `ignore`. Clusters not named keep their id. Sizes are from the run's val split.",
        "names:",
    ]
    for cluster, entry in enumerate(clusters):
        name = suggested[cluster] or default_name(cluster)
        comment = f"{_percent(entry.get('pixel_share'))} of pixels, in {_percent(entry.get('image_share'))} of images"
        if suggested[cluster]:
            comment += "; name matched by the labels"
        lines.append(f"  {cluster}: {_quoted(name)}   # {comment}")
    lines.append("ignore: []")
    return "\n".join(lines) + "\n"


def _quoted(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
