"""Data: sources to examples, tokenizers, tokenised corpora, splits, deterministic batches and the
embedded default corpus. Every bad input raises DataError with a one-line ``FILE[:LINE]: problem``."""

from .corpus import TokenizedCorpus, tokenize_examples
from .default import default_corpus
from .errors import DataError
from .examples import Example, parse_hh, render_chat
from .sampling import BlockSampler, Mixture, eval_blocks
from .sources import read_examples
from .splits import split_train_val
from .tokenizer import (
           added_bos,
           check_tokenizer_fits,
           has_saved_tokenizer,
           load_tokenizer,
           make_tokenizer,
           train_bpe_tokenizer,
           train_char_tokenizer,
)

__all__ = ["BlockSampler", "DataError", "Example", "Mixture", "TokenizedCorpus", "added_bos", "check_tokenizer_fits",
           "default_corpus", "eval_blocks", "has_saved_tokenizer", "load_tokenizer", "make_tokenizer", "parse_hh",
           "read_examples", "render_chat", "split_train_val", "tokenize_examples", "train_bpe_tokenizer", "train_char_tokenizer"]
