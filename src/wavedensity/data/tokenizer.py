"""Tokenizers: byte-level BPE (GPT-2's, any saved one, or trained on the user's text) and character
level. All are transformers fast tokenizers with an eos token: fast, because the offset mapping is
what counts the bytes each token covers; saved with ``save_pretrained`` beside every checkpoint and
reloaded with ``AutoTokenizer.from_pretrained``."""

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .errors import DataError, describe

EOS = "<|endoftext|>"  # GPT-2's end-of-text token, reused so every tokenizer here ends documents alike
UNK = "<|unk|>"
MIN_BPE_VOCAB = 257  # the 256 byte tokens and eos
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def has_saved_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds a tokenizer saved with ``save_pretrained`` (any of TOKENIZER_FILES)."""
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path_or_name: str | Path) -> PreTrainedTokenizerFast:
    """A saved tokenizer directory, a bare ``tokenizer.json``, or a hub name such as ``gpt2``."""
    where = str(path_or_name)
    path = Path(path_or_name)
    if not path.exists() and _looks_like_path(where):
        raise DataError(f"{where}: no such file or directory")
    try:
        if path.is_file():
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=where)
            # A bare tokenizer.json names no eos; GPT-2's (and ours) ends documents with EOS.
            if tokenizer.eos_token is None and EOS in tokenizer.get_vocab():
                tokenizer.eos_token = EOS
        else:
            tokenizer = AutoTokenizer.from_pretrained(where)
    except Exception as err:  # transformers/tokenizers raise many types for unreadable or unreachable files
        raise DataError(f"{where}: cannot load a tokenizer ({describe(err)})") from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise DataError(f"{where}: not a fast tokenizer (its offsets are needed to count bytes per token)")
    if tokenizer.eos_token is None:
        raise DataError(f"{where}: tokenizer has no eos token to end documents with")
    return tokenizer


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained on ``texts``: every byte has a token, so nothing is unknown."""
    if vocab_size < MIN_BPE_VOCAB:
        raise DataError(f"bpe:{vocab_size}: vocabulary must hold at least {MIN_BPE_VOCAB} tokens (256 bytes + eos)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    seen = _Counted(texts)
    tokenizer.train_from_iterator(seen, trainer)
    if not seen.chars:
        raise DataError("bpe: no text to train the tokenizer on")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS)


def train_char_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """One token per character seen in ``texts``; any other character maps to the unk token."""
    chars = set()
    for text in texts:
        chars.update(text)
    if not chars:
        raise DataError("char: no text to train the tokenizer on")
    # Characters in sorted order first (the ids of nanoGPT's char-level vocabulary), then the specials.
    vocab = {char: i for i, char in enumerate(sorted(chars))}
    vocab |= {UNK: len(vocab), EOS: len(vocab) + 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # each character
    tokenizer.decoder = decoders.Fuse()  # join tokens with nothing in between
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, unk_token=UNK)


def make_tokenizer(kind: str, texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """``"char"``, ``"bpe:N"`` (both trained on ``texts``) or a path / hub name to load."""
    if kind == "char":
        return train_char_tokenizer(texts)
    if kind.startswith("bpe:"):
        if not kind[4:].isdigit():
            raise DataError(f"{kind}: expected bpe:N with N the vocabulary size")
        return train_bpe_tokenizer(texts, int(kind[4:]))
    return load_tokenizer(kind)


def added_bos(tokenizer: PreTrainedTokenizerFast) -> int | None:
    """The bos id the tokenizer puts first when called with special tokens (Gemma's post-processor
    does), else None (GPT-2's, SmolLM2's and our char / BPE tokenizers add none)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    plain = tokenizer("a b", add_special_tokens=False).input_ids
    special = tokenizer("a b").input_ids
    return bos if special[:1] == [bos] and special[1:len(plain) + 1] == plain else None


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerFast, vocab_size: int) -> None:
    """Refuse a tokenizer whose ids would index past the model's embedding table."""
    if len(tokenizer) > vocab_size:
        raise DataError(f"{tokenizer.name_or_path or 'tokenizer'}: {len(tokenizer)} tokens do not fit "
                        f"the model's vocab_size {vocab_size}")


def _looks_like_path(where: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else is a local path that should exist."""
    return where.startswith(("/", ".", "~")) or where.endswith(".json") or where.count("/") > 1


class _Counted:
    """Passes texts through, counting their characters (the BPE trainer takes an iterator)."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.chars = texts, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.chars += len(text)
            yield text
