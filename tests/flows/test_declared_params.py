"""Tests for flows.declared_params: a stage's view of a params block it declares only in part.

Proves that a `declared_view` reads exactly the declared keys with the block's values, is an
instance of the block's class (so the library sees an ordinary block), refuses every other
key with a sentence naming the key, the declared keys and the fix, and that views of the
same class and keys share one class.
"""

from __future__ import annotations

import dataclasses

import pytest

from flows.declared_params import UndeclaredParamError, declared_view
from stego_tasks.config import CorpusParams, KnnParams


def _corpus() -> CorpusParams:
    return dataclasses.replace(CorpusParams(), root="data/mine", n_classes=7, ignore_index=254, class_names=tuple("abcdefg"))


def test_a_view_reads_the_declared_keys_with_the_blocks_values() -> None:
    block = _corpus()
    view = declared_view(block, ("root", "ignore_index"))
    assert (view.root, view.ignore_index) == ("data/mine", 254)
    assert isinstance(view, CorpusParams), "the library must see an ordinary block"


@pytest.mark.parametrize("key", ["n_classes", "class_names", "demo"])
def test_an_undeclared_key_is_refused_naming_it_and_the_declared_keys(key: str) -> None:
    view = declared_view(_corpus(), ("root", "ignore_index"))
    with pytest.raises(UndeclaredParamError) as caught:
        getattr(view, key)
    message = str(caught.value)
    assert f"CorpusParams.{key}" in message and "['ignore_index', 'root']" in message, message
    assert "add the key to the stage's params in dvc.yaml" in message and "\n" not in message


def test_methods_and_dunders_of_the_block_stay_readable() -> None:
    view = declared_view(_corpus(), ("root",))
    assert view.__class__.__name__ == "DeclaredCorpusParams"
    assert dataclasses.is_dataclass(view)


def test_views_of_one_class_and_key_set_share_their_class() -> None:
    first = declared_view(_corpus(), ("root",))
    again = declared_view(_corpus(), ("root",))
    other_keys = declared_view(_corpus(), ("root", "demo"))
    other_block = declared_view(KnnParams(), ("k",))
    assert type(first) is type(again)
    assert type(first) is not type(other_keys) and type(first) is not type(other_block)
    assert other_block.k == KnnParams().k
