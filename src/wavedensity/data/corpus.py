"""Tokenised corpora: the ids, which of them carry loss, and the source bytes each one covers."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch
from transformers import PreTrainedTokenizerFast

from ..progress import progress_bar
from .errors import DataError
from .examples import Example
from .tokenizer import added_bos

TOKENIZE_BATCH = 64  # examples per tokenizer call: the fast tokenizer encodes a batch in parallel


@dataclass(frozen=True)
class TokenizedCorpus:
    """Documents concatenated (each followed by eos when tokenised with ``add_eos``).

    ``loss_mask[i]``: predicting token i carries loss. ``token_bytes[i]``: UTF-8 bytes of the source
    text token i covers (eos: 0), so a document's tokens sum to its byte count and bits per byte =
    nats / (ln 2 * bytes of the predicted tokens) is exact. ``bos_id``: the token every window cut
    from the corpus starts with (``sampling.window``), the tokenizer's bos when it adds one; None:
    windows are plain slices of the stream.
    """

    ids: torch.Tensor  # LongTensor[N]
    loss_mask: torch.Tensor  # BoolTensor[N]
    token_bytes: torch.Tensor  # LongTensor[N]
    bos_id: int | None = None

    def __post_init__(self):
        if self.ids.dim() != 1 or not self.ids.shape == self.loss_mask.shape == self.token_bytes.shape:
            raise ValueError("ids, loss_mask and token_bytes must be 1-D and of one length")

    def __len__(self) -> int:
        return self.ids.numel()

    @property
    def first_label(self) -> int:
        """The first token a window can predict: 0 behind a bos, else 1 (token 0 is only ever context)."""
        return 0 if self.bos_id is not None else 1

    def head(self, n: int) -> "TokenizedCorpus":
        """The first ``n`` tokens."""
        return TokenizedCorpus(self.ids[:n], self.loss_mask[:n], self.token_bytes[:n], self.bos_id)


def tokenize_examples(examples: Iterable[Example], tokenizer: PreTrainedTokenizerFast,
                      add_eos: bool = True, *, progress: bool = False, desc: str = "tokenize") -> TokenizedCorpus:
    """The ids without special tokens (eos added between documents with ``add_eos``); windows cut from the
    corpus start with the tokenizer's bos when it adds one (``tokenizer.added_bos``), as the model saw
    text in pretraining. ``progress``: a bar (``desc``) over the examples with the time left."""
    ids, loss, nbytes = [], [], []
    bar = progress_bar(show=progress, total=len(examples) if hasattr(examples, "__len__") else None, desc=desc,
                       unit="example", leave=False)
    for batch in _batches(examples, TOKENIZE_BATCH):
        bar.update(len(batch))
        # The Rust tokenizer itself: the same encoding as calling the wrapper, in half the time, as the
        # wrapper copies every id and offset into Python lists once more.
        encodings = tokenizer.backend_tokenizer.encode_batch([e.text for e in batch], add_special_tokens=False)
        for example, encoding in zip(batch, encodings):
            token_bytes, token_loss, eos_loss = _cover(example, encoding.offsets)
            ids.append(torch.tensor(encoding.ids, dtype=torch.long))
            loss.append(token_loss)
            nbytes.append(token_bytes)
            if add_eos:
                ids.append(torch.tensor([tokenizer.eos_token_id]))
                loss.append(torch.tensor([eos_loss]))
                nbytes.append(torch.zeros(1, dtype=torch.long))
    bar.close()
    if not ids:
        raise DataError("no examples to tokenize")
    return TokenizedCorpus(torch.cat(ids), torch.cat(loss), torch.cat(nbytes), added_bos(tokenizer))


def _cover(example: Example, offsets: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Bytes and loss flag of each token, and whether the eos after the example carries loss.

    Token i covers the text from the previous token's end to its own (running maximum: the byte-level
    pieces of one multi-byte character all report that character's span), the first token from the
    start and the last to the end of the text. The byte counts then add up to the text's exactly,
    whatever the tokenizer splits or drops. A token carries loss if its own span or the text it covers
    holds a loss character: every byte piece of a reply's multi-byte character carries loss.
    """
    text, spans = example.text, example.loss_spans
    n_tokens = len(offsets)
    prefix_bytes = _prefix_sums(_utf8_lengths(text))
    ends = torch.tensor([end for _, end in offsets], dtype=torch.long)
    if n_tokens:
        ends = torch.cummax(ends, 0).values
        ends[-1] = len(text)
    covered_from = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])[:n_tokens]
    token_bytes = prefix_bytes[ends] - prefix_bytes[covered_from]
    if spans is None:
        return token_bytes, torch.ones(n_tokens, dtype=torch.bool), True
    char_loss = torch.zeros(len(text), dtype=torch.long)
    for start, end in spans:
        char_loss[start:end] = 1
    prefix_loss = _prefix_sums(char_loss)
    own_starts = torch.tensor([start for start, _ in offsets], dtype=torch.long)
    token_loss = prefix_loss[ends] > prefix_loss[torch.minimum(covered_from, own_starts)]
    # After a final reply the end of the document carries loss: the model learns to stop answering.
    eos_loss = bool(len(text) and char_loss[-1])
    return token_bytes, token_loss, eos_loss


def _batches(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    """Lists of ``size`` examples (itertools.batched arrives with Python 3.12)."""
    examples = iter(examples)
    while batch := list(islice(examples, size)):
        yield batch


def _utf8_lengths(text: str) -> torch.Tensor:
    """UTF-8 byte length of each character of ``text`` (from its code points)."""
    if not text:
        return torch.zeros(0, dtype=torch.long)
    code_points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    return 1 + (code_points >= 0x80).long() + (code_points >= 0x800).long() + (code_points >= 0x10000).long()


def _prefix_sums(values: torch.Tensor) -> torch.Tensor:
    """``out[i] = values[:i].sum()``, for i = 0..len(values)."""
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(values, 0)])
