"""Shared machinery of the dataset adapters: plan entries in, a STEGO corpus folder out.

An adapter only *plans*: it lists, per image, the split, the output stem, the source image
and the source label (`Entry`). `DatasetAdapter.__call__` then materialises the plan as

    DST/images/{train,val}/<stem><ext>     hard link to the source (copy across filesystems),
                                          or a PNG when the source is not an image file
    DST/labels/{train,val}/<stem>.png      class indices after the fine -> target lookup,
                                          uint8, `ignore_index` where unlabelled
    DST/corpus.yaml                        the corpus params block for params.yaml

Hard links, never symlinks: ingest quarantines symlinks that resolve outside the corpus.
Every file is written under a temporary name and renamed into place. A rerun skips files
that are up to date (a hard link to the same inode; a copy with the source's size and
mtime; a converted file stamped with its source's mtime) and deletes files the plan no
longer names, so DST always mirrors the current plan.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from stego_tasks.data.images import ImageDecodeError, load_label
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.runtime import atomic
from stego_tasks.runtime.progress import Progress

SPLITS: tuple[str, ...] = ("train", "val")
IGNORE_INDEX = 255
CORPUS_FILE = "corpus.yaml"
# os.link failures that mean "copy instead": other filesystem, protected_hardlinks,
# too many links, no permission, or a filesystem without hard links.
_NO_HARD_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP})


@dataclass(frozen=True)
class LabelParams:
    """The `corpus` params an adapted corpus needs.

    Attributes:
        n_classes: number of target classes (labels are 0..n_classes-1).
        ignore_index: label value of unlabelled pixels.
        class_names: one name per class, in label order.
    """

    n_classes: int
    ignore_index: int
    class_names: tuple[str, ...]

    def as_block(self, root: Path) -> dict:
        """The params.yaml `corpus` block for a corpus at `root` (absolute path)."""
        return {
            "root": str(Path(root).resolve()),
            "n_classes": self.n_classes,
            "ignore_index": self.ignore_index,
            "class_names": list(self.class_names),
            "demo": False,
        }


@dataclass(frozen=True)
class Entry:
    """One image of the plan.

    Attributes:
        split: "train" or "val".
        stem: output file stem, unique within the split.
        image: source image file.
        label: source label file, or None when the image has no label.
    """

    split: str
    stem: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class AdaptSummary:
    """What one adapter run did.

    Attributes:
        name: adapter name.
        params: the corpus params to set.
        n_images: images per split in DST after the run.
        n_labels: label files per split in DST after the run.
        n_linked: images hard-linked this run.
        n_copied: images copied this run (hard link impossible).
        n_converted: files decoded and written as PNG this run (labels, .mat images).
        n_skipped: files already up to date.
        n_removed: stale files deleted from DST.
        failed: (source path, reason) of each image skipped because a source file is
            missing or unreadable.
    """

    name: str
    params: LabelParams
    n_images: dict[str, int]
    n_labels: dict[str, int]
    n_linked: int = 0
    n_copied: int = 0
    n_converted: int = 0
    n_skipped: int = 0
    n_removed: int = 0
    failed: tuple[tuple[str, str], ...] = ()


class SourceError(InvalidInputError):
    """A source file of one entry is missing or cannot be decoded (that entry is skipped)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _read(reader: Callable[[Path], np.ndarray], path: Path) -> np.ndarray:
    """Call a source reader, turning any decoding failure into a SourceError."""
    try:
        return reader(path)
    except ImageDecodeError as exc:
        raise SourceError(path, exc.reason) from exc
    except (ValueError, OSError, KeyError) as exc:
        raise SourceError(path, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc


def build_lut(mapping: Mapping[int, int], ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Lookup table fine value -> target class; values not in `mapping` go to `ignore_index`.

    Args:
        mapping: source label value (0..255) -> target class (negative = ignore).

    Returns:
        [256] uint8 table.
    """
    lut = np.full(256, ignore_index, dtype=np.uint8)
    for fine, coarse in mapping.items():
        lut[fine] = ignore_index if coarse < 0 else coarse
    return lut


def remap_labels(raw: np.ndarray, lut: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Apply a fine -> target lookup to a label map.

    Args:
        raw: [H, W] integer (or integral float) label values; values outside the table,
            negative ones included, become `ignore_index`.
        lut: [K] uint8 lookup table from `build_lut`.

    Returns:
        [H, W] uint8 target labels.

    Raises:
        ValueError: `raw` is not 2-D or holds non-integral values.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise InvalidInputError(f"a label map must be 2-D, got shape {raw.shape}; pass one single-channel mask.")
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw) & (raw == np.round(raw))):
            raise InvalidInputError("a label map holds non-integral values; labels must be class indices.")
    elif raw.dtype.kind not in "iub":
        raise InvalidInputError(f"a label map has dtype {raw.dtype}; labels must be integer class indices.")
    values = raw.astype(np.int64)
    out = np.full(values.shape, ignore_index, dtype=np.uint8)
    inside = (values >= 0) & (values < lut.size)
    out[inside] = lut[values[inside]]
    return out


def read_id_list(path: Path) -> list[str]:
    """Ids from a one-id-per-line list file (blank lines skipped, duplicates dropped).

    Args:
        path: the list file.

    Returns:
        Ids in file order.

    Raises:
        FileNotFoundError: the list is missing.
    """
    if not path.is_file():
        raise MissingInputError(f"image list {path} is missing; the dataset root must hold it (see `stego adapt --help`).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"image list {path} is not UTF-8 text (byte {error.start}); restore the dataset's "
                                "own list file.") from None
    ids = (line.strip() for line in text.splitlines())
    return list(dict.fromkeys(i for i in ids if i))


def _write_png(array: np.ndarray, target: Path, stamp_from: Path) -> None:
    """Write an array as PNG atomically; give it the source's mtime so reruns can skip it."""
    src_stat = stamp_from.stat()
    # No suffix on the temporary name: a leftover must not look like an image to ingest.
    with atomic.atomic_path(target) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
        os.utime(tmp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))


def _is_stamped(target: Path, source: Path) -> bool:
    return target.is_file() and target.stat().st_mtime_ns == source.stat().st_mtime_ns


def _link_or_copy(source: Path, target: Path) -> str:
    """Place `source` at `target`: "skipped" if up to date, else "linked" or "copied"."""
    if target.is_file():
        src, dst = source.stat(), target.stat()
        if os.path.samestat(src, dst) or (src.st_size, src.st_mtime_ns) == (dst.st_size, dst.st_mtime_ns):
            return "skipped"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        # Not atomic_path: its fsync opens the file for writing, which fails on read-only
        # sources and is pointless for a link; link + rename is atomic by itself.
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINK:
            raise
        with atomic.atomic_path(target) as copy_tmp:
            shutil.copyfile(source, copy_tmp)
            stat = source.stat()
            os.utime(copy_tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return "copied"
    try:
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return "linked"


def _prepare_dst(dst: Path, name: str) -> None:
    """Refuse a DST that holds something other than this adapter's earlier output."""
    if not dst.exists():
        return
    if not dst.is_dir():
        raise InvalidInputError(f"destination {dst} exists and is not a folder; pass a new or empty folder.")
    marker = dst / CORPUS_FILE
    if marker.is_file():
        try:
            data = yaml.safe_load(marker.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):  # unreadable: not this adapter's, so foreign
            data = None
        owner = data.get("adapter") if isinstance(data, dict) else None
        if owner != name:
            raise InvalidInputError(
                f"destination {dst} was written by adapter {owner!r}, not {name!r}; "
                f"pass another destination or delete that folder first."
            )
    elif any(dst.iterdir()):
        raise InvalidInputError(
            f"destination {dst} is not empty and has no {CORPUS_FILE} from `stego adapt`; "
            f"pass a new or empty folder so no file of yours is overwritten or deleted."
        )


def write_corpus_yaml(dst: Path, name: str, src: Path, params: LabelParams) -> Path:
    """Write DST/corpus.yaml: the adapter name, the source and the `corpus` params block.

    Returns:
        The path written.
    """
    header = (
        f"# Written by `stego adapt {name}`. Paste the `corpus:` block into params.yaml, or pass\n"
        f"# each key with `dvc exp run -S corpus.KEY=VALUE`.\n"
    )
    body = {"adapter": name, "source": str(Path(src).resolve()), "corpus": params.as_block(dst)}
    text = header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000)
    path = dst / CORPUS_FILE
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic.write_text(path, text)
    return path


def _check_plan(entries: Sequence[Entry], name: str) -> None:
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        assert entry.split in SPLITS, entry.split
        key = (entry.split, entry.stem)
        if key in seen:
            raise InvalidInputError(f"adapter {name} would write two images with stem {entry.stem!r} into {entry.split}; the source lists that image twice.")
        seen.add(key)
    for split in SPLITS:
        if not any(e.split == split for e in entries):
            raise InvalidInputError(f"adapter {name} found no {split} images in the source; check that it has the layout the adapter expects (see `stego adapt --help`).")


def _prune(folder: Path, keep: set[str]) -> int:
    """Delete files in `folder` not named in `keep`; return how many."""
    if not folder.is_dir():
        return 0
    removed = 0
    for item in os.scandir(folder):
        if item.name not in keep and (item.is_file(follow_symlinks=False) or item.is_symlink()):
            os.unlink(item.path)
            removed += 1
    return removed


@dataclass(frozen=True)
class DatasetAdapter:
    """One benchmark: its plan, label table and params; calling it materialises a corpus.

    Attributes:
        name: registry name.
        params: corpus params of the output.
        mapping: source label value -> target class (unlisted values become ignore).
        plan: (src, unlabelled_train) -> entries, in output order.
        read_label: source label file -> [H, W] raw integer values.
        read_image: source image file -> [H, W, 3] uint8, or None to link/copy the file as is.
        has_unlabelled_train: whether the source has extra unlabelled training images.
    """

    name: str
    params: LabelParams
    mapping: Mapping[int, int]
    plan: Callable[[Path, bool], list[Entry]]
    read_label: Callable[[Path], np.ndarray] = load_label
    read_image: Callable[[Path], np.ndarray] | None = None
    has_unlabelled_train: bool = False
    lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lut", build_lut(self.mapping, self.params.ignore_index))
        assert len(self.params.class_names) == self.params.n_classes, self.name
        targets = set(self.lut.tolist()) - {self.params.ignore_index}
        assert targets <= set(range(self.params.n_classes)), (self.name, targets)

    def __call__(self, src: Path, dst: Path, *, unlabelled_train: bool = False) -> AdaptSummary:
        """Materialise the corpus from `src` into `dst` (see the module docstring).

        A listed image or label that is missing or cannot be decoded is not written (nor
        its partner); it is listed in `AdaptSummary.failed` and the run goes on.

        Args:
            src: the benchmark in its usual on-disk layout.
            dst: output corpus root (new, empty, or an earlier output of this adapter).
            unlabelled_train: also add the unlabelled training images (Potsdam only).

        Returns:
            AdaptSummary of this run.

        Raises:
            ValueError: bad layout, a foreign destination, or the flag on a dataset without
                unlabelled images.
            FileNotFoundError: `src` or a list file the layout needs is missing.
        """
        src, dst = Path(src), Path(dst)
        if unlabelled_train and not self.has_unlabelled_train:
            raise InvalidInputError(f"adapter {self.name} has no unlabelled training images; drop --unlabelled-train.")
        if not src.is_dir():
            raise MissingInputError(f"source folder {src} does not exist; pass the {self.name} dataset root.")
        entries = self.plan(src, unlabelled_train)
        _check_plan(entries, self.name)
        _prepare_dst(dst, self.name)
        write_corpus_yaml(dst, self.name, src, self.params)
        counts = dict.fromkeys(("linked", "copied", "converted", "skipped"), 0)
        keep: dict[Path, set[str]] = {dst / kind / split: set() for kind in ("images", "labels") for split in SPLITS}
        failed: list[tuple[str, str]] = []
        with Progress(len(entries), f"adapt {self.name}", unit="img") as progress:
            for entry in entries:
                try:
                    written = self._materialise(entry, dst)
                except SourceError as exc:
                    failed.append((str(exc.path), exc.reason))
                    written = []
                for target, how in written:
                    keep[target.parent].add(target.name)
                    counts[how] += 1
                progress.update()
        removed = sum(_prune(folder, names) for folder, names in keep.items())
        return AdaptSummary(
            name=self.name,
            params=self.params,
            n_images={s: len(keep[dst / "images" / s]) for s in SPLITS},
            n_labels={s: len(keep[dst / "labels" / s]) for s in SPLITS},
            n_linked=counts["linked"],
            n_copied=counts["copied"],
            n_converted=counts["converted"],
            n_skipped=counts["skipped"],
            n_removed=removed,
            failed=tuple(failed),
        )

    def _materialise(self, entry: Entry, dst: Path) -> list[tuple[Path, str]]:
        """Write one entry's image and label; return (target, what happened) per file.

        Both sources are read before anything is written, so a bad label never leaves its
        image behind.
        """
        if not entry.image.is_file():
            raise SourceError(entry.image, "listed by the source but missing")
        suffix = entry.image.suffix if self.read_image is None else ".png"
        image_target = dst / "images" / entry.split / f"{entry.stem}{suffix}"
        label_target = dst / "labels" / entry.split / f"{entry.stem}.png"
        image = None
        if self.read_image is not None and not _is_stamped(image_target, entry.image):
            image = _read(self.read_image, entry.image)
        labels = None
        if entry.label is not None and not _is_stamped(label_target, entry.label):
            labels = _read(lambda p: remap_labels(self.read_label(p), self.lut, self.params.ignore_index), entry.label)

        written = []
        if self.read_image is None:
            written.append((image_target, _link_or_copy(entry.image, image_target)))
        elif image is None:
            written.append((image_target, "skipped"))
        else:
            _write_png(image, image_target, entry.image)
            written.append((image_target, "converted"))
        if entry.label is not None:
            if labels is None:
                written.append((label_target, "skipped"))
            else:
                _write_png(labels, label_target, entry.label)
                written.append((label_target, "converted"))
        return written
