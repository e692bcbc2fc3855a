"""Training batches and evaluation windows over a tokenised corpus.

A sampler is an endless stream of rows, row ``i`` a pure function of (seed, i); batch ``step`` is
rows ``step * B .. (step + 1) * B - 1``. Nothing depends on what was drawn before, so a run resumed
at step k gets exactly the batch an uninterrupted run got at step k, and ranks of a distributed run
can each read their own rows of the batch (``rows``).
"""

import hashlib
import math
from collections.abc import Iterator, Sequence

import torch

from .corpus import TokenizedCorpus
from .errors import DataError

IGNORE = -100  # label the loss skips (the ignore_index of torch's cross_entropy)
MIXTURE_PERIOD = 10_000  # rows per cycle of a mixture's source schedule: ratios hold to 1 / MIXTURE_PERIOD


def derive_seed(*parts: object) -> int:
    """A 63-bit seed fixed by ``parts`` (seed, epoch, ...): distinct parts give unrelated streams."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big") >> 1


class BlockSampler:
    """Rows of ``seq_len`` tokens with next-token labels (IGNORE where the loss mask is off).

    The blocks of labels start at multiples of ``seq_len`` from the corpus's first predictable token
    (``TokenizedCorpus.first_label``: 1, or 0 when windows start with a bos). When ``seq_len`` does not
    divide the predictable tokens, one more block ends at the corpus end, and the labels the block
    before it already predicts are ignored in it, so an epoch predicts every predictable token exactly
    once. Epoch e visits the blocks in a permutation drawn from (seed, e); row r of the endless stream
    is block r % n of epoch r // n.
    """

    def __init__(self, corpus: TokenizedCorpus, seq_len: int, batch_size: int, seed: int = 0):
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be at least 1")
        n, first = len(corpus), corpus.first_label
        if n < seq_len + first:
            raise DataError(f"corpus of {n} tokens is too short for seq_len {seq_len} (needs {seq_len + first})")
        self.corpus, self.seq_len, self.batch_size, self.seed = corpus, seq_len, batch_size, seed
        full = (n - first) // seq_len
        self.starts = first + torch.arange(full) * seq_len  # a tensor: C4-scale corpora have millions of blocks
        self.repeated = 0  # labels at the head of the last block that the block before it predicts
        if (n - first) % seq_len:
            self.starts = torch.cat([self.starts, torch.tensor([n - seq_len])])
            self.repeated = first + full * seq_len - (n - seq_len)
        self._epoch, self._order = -1, None  # the permutation of the epoch last used, cached

    @property
    def blocks_per_epoch(self) -> int:
        return len(self.starts)

    def row(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``index`` of the endless stream: (input_ids [seq_len], labels [seq_len])."""
        epoch, position = divmod(index, len(self.starts))
        block = int(self._permutation(epoch)[position])
        inputs, labels, _ = window(self.corpus, int(self.starts[block]), self.seq_len)
        if block == len(self.starts) - 1:
            labels[:self.repeated] = IGNORE
        return inputs, labels

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids [B, seq_len], labels [B, seq_len]) of training step ``step``."""
        return self.rows(range(step * self.batch_size, (step + 1) * self.batch_size))

    def rows(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``indices`` of the stream, stacked: (input_ids [len, seq_len], labels [len, seq_len])."""
        return _stack([self.row(index) for index in indices])

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._epoch, self._order = epoch, torch.randperm(len(self.starts), generator=generator)
        return self._order


class Mixture:
    """Batches mixing several corpora, each row's source drawn in proportion to the ratios.

    Sources follow a fixed schedule of MIXTURE_PERIOD slots (exact counts by the ratios, shuffled by
    the seed) repeated forever; each source reads its own BlockSampler stream in order, its row index
    computed from the slot, so ``batch(step)`` stays a pure function of (seed, step).
    """

    def __init__(self, sources: Sequence[tuple[TokenizedCorpus, float]], seq_len: int, batch_size: int,
                 seed: int = 0):
        if not sources:
            raise DataError("mixture has no sources")
        ratios = [float(ratio) for _, ratio in sources]
        if not all(math.isfinite(r) and r > 0 for r in ratios):
            raise DataError(f"mixture ratios {ratios} must all be positive numbers")
        counts = _apportion(ratios, MIXTURE_PERIOD)
        if 0 in counts:
            raise DataError(f"mixture ratios {ratios}: each share must be at least 1/{MIXTURE_PERIOD} of the total")
        self.batch_size = batch_size
        self.samplers = [BlockSampler(corpus, seq_len, batch_size, derive_seed(seed, "source", i))
                         for i, (corpus, _) in enumerate(sources)]
        self.counts = counts
        slots = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        generator = torch.Generator().manual_seed(derive_seed(seed, "schedule"))
        self.schedule = slots[torch.randperm(MIXTURE_PERIOD, generator=generator)]
        # rank[j]: how many earlier slots of the period hold the same source as slot j.
        one_hot = torch.nn.functional.one_hot(self.schedule, len(counts))
        self.rank = (torch.cumsum(one_hot, 0) - one_hot).gather(1, self.schedule[:, None]).squeeze(1)

    def sources(self, step: int) -> torch.Tensor:
        """Index of the source of each row of ``batch(step)``: LongTensor[B]."""
        rows = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return self.schedule[rows % MIXTURE_PERIOD]

    def row(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``index`` of the mixed stream: the next unread row of the source its slot names."""
        cycle, slot = divmod(index, MIXTURE_PERIOD)
        source = int(self.schedule[slot])
        return self.samplers[source].row(cycle * self.counts[source] + int(self.rank[slot]))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows(range(step * self.batch_size, (step + 1) * self.batch_size))

    def rows(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return _stack([self.row(index) for index in indices])


def window(corpus: TokenizedCorpus, first: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The window predicting tokens ``first .. first + length - 1``: (input_ids, labels, label_bytes).

    The inputs are the tokens before them, ``first - 1 ..``, with the corpus's bos in place of the first
    (so ``first`` may be 0): [bos] + the next length - 1 tokens. Without a bos they are a plain slice of
    the stream and ``first`` is at least 1. Labels are IGNORE and label bytes 0 where the loss mask is
    off; a bos is never a label, so bits per byte counts the text's bytes only.
    """
    target = slice(first, first + length)
    if corpus.bos_id is not None:
        inputs = torch.cat([torch.tensor([corpus.bos_id]), corpus.ids[first:first + length - 1]])
    elif first >= 1:
        inputs = corpus.ids[first - 1:first + length - 1]
    else:
        raise ValueError("token 0 of a corpus without bos has no context to be predicted from")
    keep = corpus.loss_mask[target]
    return (inputs, torch.where(keep, corpus.ids[target], IGNORE),
            torch.where(keep, corpus.token_bytes[target], 0))


def eval_blocks(corpus: TokenizedCorpus, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows (input_ids [n], labels [n], label_bytes [n]), n <= seq_len, that together
    predict every predictable token (all but the first; all behind a bos) exactly once. ``label_bytes``
    is 0 where the label is ignored, so bits per byte = sum of nats / (ln 2 * sum of label_bytes)."""
    if seq_len < 1:
        raise DataError(f"seq_len ({seq_len}) must be at least 1")
    n, first = len(corpus), corpus.first_label
    if n - first < 1:
        raise DataError(f"corpus of {n} tokens has nothing to predict")
    for start in range(first, n, seq_len):
        yield window(corpus, start, min(seq_len, n - start))


def _apportion(ratios: list[float], total: int) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``ratios`` (largest remainders)."""
    shares = [r / sum(ratios) * total for r in ratios]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


def _stack(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([inputs for inputs, _ in rows]), torch.stack([labels for _, labels in rows])
