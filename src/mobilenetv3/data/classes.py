"""A model's classes against a dataset's (or the names given to predict): one check for eval, export and predict.

Counts are always compared. Names are compared where both sides are known: a dataset's names unless they only
number the classes (``0``, ``c1``, ``class_2``: an ImageFolder whose folders are numbered); a model's unless they
only number them and nothing says they are the names its training data had (a training run's config, or the
dataset an exported file records): then "0".."9" are the data's real names, and Fashion-MNIST's are not them.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

_INDEX_NAME = re.compile(r"\D*?(\d+)")


def names_are_indices(names: Sequence) -> bool:
    """Names that only number the classes (``0``, ``c1``, ``class_2``, ...): nothing to compare them by."""
    matches = [_INDEX_NAME.fullmatch(str(name)) for name in names]
    return all(m is not None and int(m.group(1)) == i for i, m in enumerate(matches))


def class_mismatch(model_names: Optional[Sequence], num_classes: int, data_names: Sequence, source: str,
                   names_known: bool = False) -> Optional[str]:
    """What is wrong between the classes of ``source`` (``data_names``) and the model's (``num_classes``
    outputs, named ``model_names`` if it has names); ``None`` if nothing. ``names_known``: the model's names are
    those of the data it was trained on, so they are compared even when they only number the classes."""
    data = [str(name) for name in data_names]
    named = [str(name) for name in model_names] if model_names is not None and \
        len(model_names) == num_classes else None
    if len(data) != num_classes:
        theirs = f" ({shown(named)})" if named else ""
        return f"{source} has {len(data)} classes ({shown(data)}), the weights {num_classes}{theirs}"
    if named is None or named == data or names_are_indices(data) or (names_are_indices(named) and not names_known):
        return None
    if sorted(named) == sorted(data):
        return f"{source} has the weights' classes in another order ({shown(data)}; the weights: {shown(named)})"
    differ = [i for i in range(num_classes) if data[i] != named[i]]
    return (f"{source} has other classes than the weights ({len(differ)} of {num_classes} differ: class {differ[0]} "
            f"is {data[differ[0]]!r} there, {named[differ[0]]!r} in the weights)")


def shown(names: Sequence[str], most: int = 4) -> str:
    """``a, b, c, d, ...``: the first ``most`` names."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
