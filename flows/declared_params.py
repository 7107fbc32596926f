"""Params blocks a stage may read only in part: the keys its `dvc.yaml` entry declares.

A stage that declares some keys of a block (e.g. `corpus.root`, not the whole `corpus`
block) hands the library a `declared_view` of the block instead of the block, so reading
any other key fails at once instead of leaving DVC blind to a value the stage used. It is
a DVC contract, so it lives with the orchestration; the library sees an ordinary block.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


class UndeclaredParamError(RuntimeError):
    """A stage read a params key that its DVC stage does not declare (see `declared_view`)."""


_VIEW_CLASSES: dict[tuple[type, frozenset[str]], type] = {}


def _view_class(cls: type, keys: frozenset[str]) -> type:
    if (cls, keys) not in _VIEW_CLASSES:
        hidden = frozenset(f.name for f in dataclasses.fields(cls)) - keys

        def __getattribute__(self: Any, name: str) -> Any:  # noqa: N807 - the dunder being overridden
            if name in hidden:
                raise UndeclaredParamError(
                    f"this stage reads {cls.__name__}.{name}, which its dvc.yaml entry does not declare "
                    f"(it declares {sorted(keys)}); add the key to the stage's params in dvc.yaml."
                )
            return object.__getattribute__(self, name)

        _VIEW_CLASSES[cls, keys] = type(f"Declared{cls.__name__}", (cls,), {"__getattribute__": __getattribute__})
    return _VIEW_CLASSES[cls, keys]


def declared_view(block: T, keys: tuple[str, ...]) -> T:
    """A copy of params block `block` of which only `keys` can be read.

    A stage that declares some keys of a block in dvc.yaml (e.g. `corpus.root`, not the
    whole `corpus` block) hands the library this view instead of the block: reading any
    other key raises `UndeclaredParamError` naming it, so DVC tracks every value the stage
    can use. The view is an instance of the block's class (the other fields hold defaults
    and cannot be read).

    Args:
        block: a params dataclass instance.
        keys: the field names the stage declares.

    Returns:
        The view.
    """
    cls = block.__class__  # not type(): a recording proxy in tests/flows/test_contracts.py names its block's class here
    view = cls(**{key: getattr(block, key) for key in keys})
    object.__setattr__(view, "__class__", _view_class(cls, frozenset(keys)))
    return view
