"""Held-out splits that never overlap the training data."""

import hashlib
from collections.abc import Iterable

from .errors import DataError
from .examples import Example


def split_train_val(examples: Iterable[Example], val_fraction: float,
                    mode: str = "documents") -> tuple[list[Example], list[Example]]:
    """``(train, val)``.

    ``"documents"``: each document goes to val when a stable hash of its text falls below
    ``val_fraction``; identical texts therefore always land together, the split of a document never
    changes when others are added, and with >= 2 distinct documents each side gets at least one.
    ``"tail"``: the last ``val_fraction`` of the concatenated text by characters (the nanoGPT
    tinyshakespeare split: first 90% / last 10%), cutting the straddling document in two.
    """
    examples = list(examples)
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction} must lie strictly between 0 and 1")
    if mode == "documents":
        return _split_documents(examples, val_fraction)
    if mode == "tail":
        return _split_tail(examples, val_fraction)
    raise DataError(f"unknown split mode {mode!r} (expected 'documents' or 'tail')")


def _unit_hash(text: str) -> float:
    """A position in [0, 1) fixed by the text alone (not Python's per-process salted hash)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _split_documents(examples: list[Example], val_fraction: float) -> tuple[list[Example], list[Example]]:
    keys = [_unit_hash(e.text) for e in examples]
    val_keys = {k for k in keys if k < val_fraction}
    distinct = sorted(set(keys))
    if len(distinct) >= 2:
        if not val_keys:
            val_keys = {distinct[0]}
        elif len(val_keys) == len(distinct):
            val_keys.discard(distinct[-1])
    train = [e for e, k in zip(examples, keys) if k not in val_keys]
    val = [e for e, k in zip(examples, keys) if k in val_keys]
    return train, val


def _split_tail(examples: list[Example], val_fraction: float) -> tuple[list[Example], list[Example]]:
    cut = int(sum(len(e.text) for e in examples) * (1 - val_fraction))
    train, val, pos = [], [], 0
    for example in examples:
        start, end = pos, pos + len(example.text)
        pos = end
        if end <= cut:
            train.append(example)
        elif start >= cut:
            val.append(example)
        else:
            train.append(_slice(example, 0, cut - start))
            val.append(_slice(example, cut - start, len(example.text)))
    return train, val


def _slice(example: Example, a: int, b: int) -> Example:
    """``example.text[a:b]`` with its loss spans clipped and shifted to match."""
    spans = example.loss_spans
    if spans is not None:
        spans = [(max(s, a) - a, min(e, b) - a) for s, e in spans if s < b and e > a]
    return Example(example.text[a:b], spans)
