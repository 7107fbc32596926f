"""Dataset adapters: turn the STEGO benchmarks, in their usual on-disk layouts, into corpora.

Each adapter writes `DST/images/{train,val}`, `DST/labels/{train,val}` (class-index PNGs,
255 = unlabelled), `DST/corpus.yaml` (the `corpus` params block) and `DST/params.yaml`: a
complete params file, the dataset's published preset (`stego_tasks/presets/`) with the
corpus filled in, so every pipeline stage runs on the benchmark with the paper's settings::

    stego adapt cocostuff27 /data/cocostuff /data/corpora/cocostuff27 --params params.yaml

| name | source layout | classes |
|---|---|---|
| `cocostuff27` | `images/`, `annotations/`, `curated/` of COCO-Stuff (STEGO's `cocostuff`) | 27 |
| `cityscapes27` | `leftImg8bit/`, `gtFine/` of Cityscapes | 27 |
| `potsdam3` | `imgs/*.mat`, `gt/*.mat`, split lists (STEGO's `potsdam`) | 3 |
| `potsdam` | the same, fine labels kept | 6 |
"""

from __future__ import annotations

import os
from pathlib import Path

from stego_tasks.data.adapters.cityscapes import CITYSCAPES27
from stego_tasks.data.adapters.cocostuff import COCOSTUFF27
from stego_tasks.data.adapters.core import AdaptSummary, DatasetAdapter
from stego_tasks.data.adapters.potsdam import POTSDAM, POTSDAM3
from stego_tasks.errors import InvalidInputError
from stego_tasks.presets import params_text
from stego_tasks.runtime import atomic

__all__ = [
    "ADAPTERS",
    "LAYOUT_HELP",
    "PARAMS_FILE",
    "PRESETS_FOR",
    "AdaptSummary",
    "DatasetAdapter",
    "adapt",
    "get_adapter",
    "preset_for",
    "write_params",
]

ADAPTERS: dict[str, DatasetAdapter] = {a.name: a for a in (COCOSTUFF27, CITYSCAPES27, POTSDAM3, POTSDAM)}

# The published preset of each benchmark per backbone (reference doc sections 5, 9 and 11);
# the first one listed is the default.
PRESETS_FOR: dict[str, dict[str, str]] = {
    "cocostuff27": {"vits8": "cocostuff27_vits8", "vitb8": "cocostuff27_vitb8"},
    "cityscapes27": {"vitb8": "cityscapes27_vitb8"},
    "potsdam3": {"vits8": "potsdam3_vits8"},
    "potsdam": {"vits8": "potsdam3_vits8"},
}
PARAMS_FILE = "params.yaml"


LAYOUT_HELP = """\
Write a STEGO benchmark as a corpus: DST/images/{train,val}, DST/labels/{train,val}
(class-index PNGs, 255 = unlabelled) and DST/corpus.yaml (the params to set). Images are
hard-linked (copied across filesystems); rerunning updates only what changed.

Source layouts (SRC):
  cocostuff27   images/{train2017,val2017}/<id>.jpg, annotations/{train2017,val2017}/<id>.png,
                curated/train2017/Coco164kFull_Stuff_Coarse.txt,
                curated/val2017/Coco164kFull_Stuff_Coarse_7.txt
  cityscapes27  leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png,
                gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png
  potsdam3      imgs/<id>.mat, gt/<id>.mat, labelled_train.txt, labelled_test.txt
  potsdam         (+ unlabelled_train.txt with --unlabelled-train); potsdam keeps the 6 classes
"""


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter registered as `name`.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name not in ADAPTERS:
        raise InvalidInputError(f"unknown dataset adapter {name!r}; choose one of {', '.join(sorted(ADAPTERS))}.")
    return ADAPTERS[name]


def adapt(name: str, src: str | Path, dst: str | Path, *, unlabelled_train: bool = False) -> AdaptSummary:
    """Materialise benchmark `name` from `src` as a corpus at `dst`.

    Args:
        name: a key of `ADAPTERS`.
        src: the benchmark root in its usual layout.
        dst: output corpus root (new, empty, or an earlier output of the same adapter).
        unlabelled_train: add the unlabelled training images (Potsdam adapters only).

    Returns:
        AdaptSummary, whose `params` are the corpus params (also in DST/corpus.yaml; the complete
        params file of the dataset's default preset is DST/params.yaml).
    """
    summary = get_adapter(name)(Path(src), Path(dst), unlabelled_train=unlabelled_train)
    write_params(name, dst)
    return summary


def preset_for(name: str, backbone: str | None = None) -> str:
    """The preset of benchmark `name` for `backbone` ("vits8" / "vitb8"; None: its default).

    Raises:
        ValueError: no published setting for that pair.
    """
    choices = PRESETS_FOR[get_adapter(name).name]
    if backbone is None:
        return next(iter(choices.values()))
    if backbone not in choices:
        raise InvalidInputError(
            f"STEGO published no {name} setting for {backbone}; use --backbone {' or '.join(choices)}."
        )
    return choices[backbone]


def write_params(name: str, dst: str | Path, backbone: str | None = None, out: str | Path | None = None) -> Path:
    """Write the complete params file of an adapted corpus: its preset with the corpus block filled in.

    Args:
        name: the adapter.
        dst: the adapted corpus root (its absolute path goes into `corpus.root`).
        backbone: "vits8" / "vitb8", or None for the dataset's default.
        out: where to write; default DST/params.yaml. An existing file elsewhere is kept as
            `<out>.bak` before it is replaced, so no setting of the user's is lost.

    Returns:
        The path written.
    """
    adapter = get_adapter(name)
    preset = preset_for(name, backbone)
    header = (
        f"Written by `stego adapt {name}`: the published defaults with the overrides of preset {preset}.\n"
        "Every value is an ordinary param: change it here or with `dvc exp run -S block.key=value`."
    )
    text = params_text(preset, adapter.params.as_block(Path(dst)), header)
    target = Path(out) if out is not None else Path(dst) / PARAMS_FILE
    if target.is_dir():
        raise InvalidInputError(f"--params {target} is a folder; pass the params file to write, e.g. {target / PARAMS_FILE}.")
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return target  # a rerun leaves an up-to-date file alone, so DVC sees no change
    if target.is_file() and out is not None:
        os.replace(target, target.with_name(target.name + ".bak"))
    atomic.write_text(target, text)
    return target
