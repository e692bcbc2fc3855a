"""Associative recall (MQAR): WDA in each routing mode against the softmax baseline (issue 4, item 6).

The multi-query associative recall task of Zoology (Arora et al., 2023) scaled to CPU. A sequence of
``seq_len`` tokens from a vocabulary of 256 starts with K key-value pairs ``k1 v1 k2 v2 ... kK vK``
(keys drawn without replacement from 1..127, values from 128..255: disjoint halves). The rest of the
sequence is cut into two-token slots, each a query: one of the K keys followed by its value. Keys are
queried in random order and equally often (``--queries Q`` fills only Q random slots, the others hold
the filler token 0; ``--queries K`` asks each key once, as in Zoology). The model must predict the
paired value right after each queried key: the label of a query position is its value, every other
label is -100, and loss and accuracy count only the query positions.

Differences from Zoology, for a 256-token vocabulary on CPU: Zoology fills the gaps with random tokens
from a vocabulary of 8192; here random filler would repeat the keys themselves and make answers
ambiguous, hence the reserved filler token. Zoology asks each key once, at slots biased towards the
pairs; asking in every slot gives many more supervised positions per token trained on (the learning
signal on CPU is scarce). Since a repeated key can also be answered from its previous query, nearby,
the table reports the first query of each key separately: its answer is only in the pairs.

Training: fresh random batches each step from a seeded ``torch.Generator``, a fixed held-out test
set from another seed, 2-layer models (the ``cpu-tiny`` preset at the given width and sequence
length), AdamW at a fixed learning rate after a short linear warm-up, gradients clipped at norm 1,
cross-entropy with ``ignore_index=-100`` on ``model(input_ids).logits``. Every mode gets the same
steps, learning rate, batch, data and seed. Every model is initialised by ``WDAConfig.init``
(``--init release``: PyTorch's defaults as the release trained; ``--init normal``: N(0, 0.02));
``--init release,normal`` runs both. On the slots task (default ``release``) under the normal one not
even the softmax baseline got past guessing among the values in context (accuracy 1/K) within 2,000
steps, while under PyTorch's defaults it reaches ~100% at (64, 4) by 1,200-1,600 steps (seeds 0, 1, 2).
On the zoology task (default ``normal``, tied embeddings) it is the other way round: PyTorch's N(0, 1)
embeddings, tied, give logits of std ~sqrt(width), and release-initialised softmax stayed at accuracy 0.

Zoology's MQAR (``--task zoology``, the default) follows ``zoology/data/multiquery_ar.py`` with the
figure-2 configs' ``random_non_queries=False``, and its identity state mixer (``--no-ffn``, the
default for this task). What differs (docs/benchmarks.md "MQAR at Zoology's settings"): fresh batches
of ``--batch`` instead of 100,000 fixed examples for up to 64 epochs at batch 512/256, far fewer steps,
2 heads and the package's post-norm skeleton instead of a 1-head pre-norm GPT-2 block with dropout 0.1.

Modes (``--modes``, default the first four):
    prefix          WDA, causal per-prefix routing (the default mode), preset content path (0.15, rank 4)
    static          WDA, content-free routing (one kernel per head, FFT)
    prefix-content  WDA prefix with the content path raised (--content-mix, learned, --content-rank):
                    the remedy the issue names
    softmax         the softmax baseline (causal SDPA in the identical skeleton)
    prenorm-softmax a reference outside the package: a plain pre-norm transformer of the same size

Run:
    python -m bench.mqar           # default: seq 64 with 4 pairs, widths 64 and 128, 2,000 steps x 32
    python -m bench.mqar --seq-lens 64,128,256 --pairs 4,8,16   # settings pair up one-to-one
    python -m bench.mqar --grid ...  # every seq_len x pairs combination instead
    python -m bench.mqar --smoke   # one tiny configuration of every mode, seconds

Cost on 2 cores: the default sweep takes about 10-20 minutes. A step costs roughly 2x more at
seq 128 and 6x more at seq 256 than at seq 64, so the issue's full table (3 settings x 2 widths) at
the default steps takes hours; and 2,000 steps are not enough there: softmax at width 64, seq 128,
8 pairs was still at 1/8 after 2,000 steps (width 128 learns much faster: ~98% at (64, 4) by step 500).
"""

import argparse
import datetime
import itertools
import math
import platform
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from wavedensity import WDAForCausalLM, preset_config
from wavedensity.models.configuration import INIT_SCHEMES
from wavedensity.ops import causal_linear_attention, taylor_attention_quadratic, taylor_feature_map

VOCAB = 256
FILLER = 0
KEYS = range(1, VOCAB // 2)  # 1..127
VALUES = range(VOCAB // 2, VOCAB)  # 128..255
MODES = ("prefix", "static", "prefix-content", "softmax", "prenorm-softmax")
DEFAULT_MODES = MODES[:4]
# Issue 15's content-path options (pure WDA: no softmax anywhere, unless the name says window/hybrid).
# "cN": content_conv N; the content path is the whole mixer (content_mix 1) unless "mix" says otherwise.
RECALL_MODES = {
    "elu": dict(content_mix=1.0, content_feature_map="elu"),
    "elu-c4": dict(content_mix=1.0, content_feature_map="elu", content_conv=4),
    "taylor": dict(content_mix=1.0, content_feature_map="taylor"),
    "taylor-c4": dict(content_mix=1.0, content_feature_map="taylor", content_conv=4),
    "taylor-c4-v": dict(content_mix=1.0, content_feature_map="taylor", content_conv=4, content_value_proj=True),
    "taylor-c4-unnorm": dict(content_mix=1.0, content_feature_map="taylor", content_conv=4, content_normalize=False),
    "taylor-unnorm": dict(content_mix=1.0, content_feature_map="taylor", content_normalize=False),
    "elu-c4-unnorm": dict(content_mix=1.0, content_feature_map="elu", content_conv=4, content_normalize=False),
    "hedgehog-c4-unnorm": dict(content_mix=1.0, content_feature_map="hedgehog", content_conv=4,
                               content_normalize=False),
    "taylor-c4-unnorm-mix0.5": dict(content_mix=0.5, content_feature_map="taylor", content_conv=4,
                                    content_normalize=False),
    "taylor-c4-mix0.5": dict(content_mix=0.5, content_feature_map="taylor", content_conv=4),
    "hedgehog-c4": dict(content_mix=1.0, content_feature_map="hedgehog", content_conv=4),
    "taylor-c4-window16": dict(content_mix=1.0, content_feature_map="taylor", content_conv=4, sliding_window=16),
    "hybrid": dict(mixer_types=["wda", "softmax"]),  # layer 0 the default WDA (prefix), layer 1 softmax
    "hybrid-window16": dict(mixer_types=["wda", "softmax"], softmax_window=16),
}
ALL_MODES = MODES + tuple(RECALL_MODES)
ZOOLOGY_LRS = [1e-4, 4.6e-4, 2.2e-3, 1e-2]  # np.logspace(-4, -2, 4), Zoology's sweep


class PreNormTransformer(nn.Module):
    """The reference outside the package: a plain pre-norm causal transformer (GPT-2 layout, as in Zoology).

    Same width, heads, layers, FFN ratio, learned absolute positions and init std as the package's
    models; only the LayerNorms sit before each sublayer instead of after the residual sum. It shows
    what a standard attention model reaches on the task in the same budget.
    """

    def __init__(self, config):
        super().__init__()
        d = config.embed_dim
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.seq_len, d))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, config.num_heads, config.ffn_mult * d, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        nn.init.normal_(self.pos_emb, 0.0, config.initializer_range)  # everything else: torch's default init

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        length = input_ids.shape[1]
        hidden = self.embed_tokens(input_ids) + self.pos_emb[:, :length]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=input_ids.device)
        for layer in self.layers:
            hidden = layer(hidden, src_mask=mask, is_causal=True)
        return SimpleNamespace(logits=self.lm_head(self.norm(hidden)))


def make_batch(batch: int, seq_len: int, pairs: int, generator: torch.Generator,
               queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)``, both ``[batch, seq_len]``: K pairs, then queries of those keys in random order.

    The tail after the ``2 * pairs`` tokens of pairs is cut into two-token slots; ``queries`` of them
    (all by default) hold a queried key followed by its value, the others the filler token twice.
    Keys are queried in random order and equally often, to within one (``queries == pairs`` asks
    every key exactly once, as Zoology does). ``labels[b, t]`` is the value paired with
    ``input_ids[b, t]`` (so also ``input_ids[b, t + 1]``) where ``t`` is a query position, -100
    everywhere else.
    """
    if not 1 <= pairs <= len(KEYS):
        raise ValueError(f"pairs must lie in [1, {len(KEYS)}], got {pairs}")
    slots = (seq_len - 2 * pairs) // 2  # two-token query slots in the tail
    queries = slots if queries is None else queries
    if not 1 <= queries <= slots:
        raise ValueError(f"seq_len={seq_len} with {pairs} pairs has room for 1..{slots} queries, got {queries}")

    def shuffled(rows: int, n: int) -> torch.Tensor:  # [batch, rows, n]: independent permutations of range(n)
        return torch.rand(batch, rows, n, generator=generator).argsort(dim=-1)

    keys = shuffled(1, len(KEYS))[:, 0, :pairs] + KEYS.start  # distinct within a row
    values = shuffled(1, len(VALUES))[:, 0, :pairs] + VALUES.start
    inputs = torch.full((batch, seq_len), FILLER, dtype=torch.long)
    labels = torch.full((batch, seq_len), -100, dtype=torch.long)
    inputs[:, 0 : 2 * pairs : 2], inputs[:, 1 : 2 * pairs : 2] = keys, values

    which = shuffled(-(-queries // pairs), pairs).flatten(1)[:, :queries]  # pair index of each query
    slot = shuffled(1, slots)[:, 0, :queries]
    position = 2 * pairs + 2 * slot
    asked, answer = keys.gather(1, which), values.gather(1, which)
    inputs.scatter_(1, position, asked)
    inputs.scatter_(1, position + 1, answer)
    labels.scatter_(1, position, answer)
    return inputs, labels


def zoology_batch(batch: int, seq_len: int, pairs: int, vocab: int, generator: torch.Generator,
                  power_a: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoology's MQAR: ``(input_ids, labels)`` ``[batch, seq_len]``.

    K pairs ``k1 v1 .. kK vK`` (keys distinct, from the first half of the vocabulary without token 0,
    values from the second half), then each key queried once, in random order, at two-token slots of
    the tail drawn without replacement with probability ``p(gap) ~ gap^(power_a - 1)`` (a power law,
    most queries close to the pairs); every other position holds token 0 (Zoology's published configs:
    ``random_non_queries=False``), the position after a query too (the answer is never in the input).
    ``labels`` hold the value at each query position, -100 elsewhere.
    """
    half = vocab // 2
    slots = (seq_len - 2 * pairs) // 2
    if pairs < 1 or slots < pairs or pairs > half - 1:
        raise ValueError(f"seq_len={seq_len}, vocab={vocab} have no room for {pairs} pairs and their queries")
    # the indices of the `pairs` smallest of uniform draws: distinct, in random order (argsort()[:, :pairs],
    # without sorting all 4,096)
    keys = torch.rand(batch, half - 1, generator=generator).topk(pairs, largest=False).indices + 1
    values = torch.rand(batch, half, generator=generator).topk(pairs, largest=False).indices + half
    inputs = torch.zeros(batch, seq_len, dtype=torch.long)
    labels = torch.full((batch, seq_len), -100, dtype=torch.long)
    inputs[:, 0 : 2 * pairs : 2], inputs[:, 1 : 2 * pairs : 2] = keys, values
    gaps = torch.arange(1, slots + 1, dtype=torch.float64)
    probs = (power_a * gaps ** (power_a - 1)).expand(batch, -1)
    slot = torch.multinomial(probs, pairs, replacement=False, generator=generator)  # one slot per key, in order
    position = 2 * pairs + 2 * slot
    inputs.scatter_(1, position, keys)
    labels.scatter_(1, position, values)
    return inputs, labels


def first_queries(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Boolean ``[batch, seq_len]``: the query positions whose key is asked there for the first time.

    Only the pairs hold their answer, however far back; later queries of the same key can also copy
    the value that followed its previous query.
    """
    queried = labels != -100
    first = torch.zeros_like(queried)
    for row in range(inputs.shape[0]):
        seen = set()
        for t in queried[row].nonzero().flatten().tolist():
            key = int(inputs[row, t])
            first[row, t] = key not in seen
            seen.add(key)
    return first


def model_config(mode: str, width: int, seq_len: int, init: str, args):
    overrides = dict(vocab_size=vocab_of(args), seq_len=seq_len, embed_dim=width, num_layers=2, num_heads=args.heads,
                     tie_embeddings=args.tie, init=init, use_ffn=args.ffn)
    if mode in RECALL_MODES:
        overrides.update(learned_content=True, content_rank=args.content_rank, **RECALL_MODES[mode])
    elif mode in ("softmax", "prenorm-softmax"):
        overrides["mixer"] = "softmax"
    elif mode == "static":
        overrides["routing"] = "static"
    elif mode == "prefix-content":
        overrides.update(content_mix=args.content_mix, learned_content=True, content_rank=args.content_rank)
    return preset_config("cpu-tiny", **overrides)


def vocab_of(args) -> int:
    return args.vocab if args.task == "zoology" else VOCAB


def query_logits(model, inputs: torch.Tensor, queried: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, vocab]`` at the ``queried`` positions only: the LM head over every position would cost
    most of a step at a vocabulary of 8192, and the loss reads only the query positions."""
    if isinstance(model, PreNormTransformer):
        return model(inputs).logits[queried]
    hidden = model.model(inputs, use_cache=False).last_hidden_state
    return model.lm_head(hidden[queried])


@torch.no_grad()
def accuracy(model, inputs: torch.Tensor, labels: torch.Tensor, first: torch.Tensor, batch: int) -> tuple[float, float]:
    """Accuracy over all query positions and over the first query of each key."""
    model.eval()
    queried = labels != -100
    hits = torch.zeros_like(queried)
    for i in range(0, len(inputs), batch):
        rows = slice(i, i + batch)
        hits[rows][queried[rows]] = query_logits(model, inputs[rows], queried[rows]).argmax(dim=-1) == labels[rows][
            queried[rows]]
    model.train()
    return hits[queried].float().mean().item(), hits[first].float().mean().item()


def decoding_state_floats(model, inputs: torch.Tensor) -> int:
    """Floats of decoding state one sequence of ``inputs``' length leaves in the cache (all layers)."""
    if isinstance(model, PreNormTransformer):
        return 2 * model.config.num_layers * inputs.shape[1] * model.config.embed_dim  # its keys and values
    with torch.no_grad():
        cache = model(inputs[:1], use_cache=True).cache
    return sum(t.numel() for layer in cache.layers for t in layer.tensors.values() if t.is_floating_point())


def batch_of(args, size: int, seq_len: int, pairs: int, generator: torch.Generator):
    if args.task == "zoology":
        return zoology_batch(size, seq_len, pairs, args.vocab, generator)
    return make_batch(size, seq_len, pairs, generator, args.queries)


def run_one(mode: str, width: int, seq_len: int, pairs: int, init: str, args, lr: float) -> dict:
    """Train one model on fresh batches at learning rate ``lr`` and score it on the fixed test set."""
    torch.manual_seed(args.seed)
    config = model_config(mode, width, seq_len, init, args)
    model = PreNormTransformer(config) if mode == "prenorm-softmax" else WDAForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, args))
    train_data = torch.Generator().manual_seed(args.seed)
    test_inputs, test_labels = batch_of(args, args.test_size, seq_len, pairs,
                                        torch.Generator().manual_seed(10_000 + args.seed))
    test = (test_inputs, test_labels, first_queries(test_inputs, test_labels), args.batch)

    start = time.perf_counter()
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(args.steps):
        inputs, labels = batch_of(args, args.batch, seq_len, pairs, train_data)
        queried = labels != -100
        loss = F.cross_entropy(query_logits(model, inputs, queried), labels[queried])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if args.log_every and (step + 1) % args.log_every == 0 and step + 1 < args.steps:
            scores = accuracy(model, *test)
            print(f"    {mode} width {width} seq {seq_len} pairs {pairs} lr {lr:g} step {step + 1}: "
                  f"train loss {loss.item():.3f}, "
                  f"test accuracy {scores[0]:.3f} (first queries {scores[1]:.3f})", file=sys.stderr, flush=True)
            if args.stop_at and scores[0] >= args.stop_at:
                break  # solved: further steps cannot raise the row, and CPU time is scarce
    acc, first_acc = accuracy(model, *test)
    return dict(mode=mode, init=init, width=width, seq_len=seq_len, pairs=pairs, params=model.num_parameters(), lr=lr,
                steps=step + 1, loss=loss.item(), accuracy=acc, first=first_acc,
                state=decoding_state_floats(model, test_inputs), seconds=time.perf_counter() - start)


def time_taylor_forms(batch: int, seq_len: int, heads: int = 2, rank: int = 16, head_dim: int = 64,
                      repeats: int = 3) -> dict[str, float]:
    """Best seconds of forward + backward of the unnormalised Taylor content path in its two exact forms,
    alternated in one run: the kernel form (``taylor_attention_quadratic``, used without a cache) and the
    chunked feature form (``causal_linear_attention`` on ``taylor_feature_map``, which keeps a state)."""
    q, k = (torch.randn(batch, heads, seq_len, rank, requires_grad=True) for _ in range(2))
    v = torch.randn(batch, heads, seq_len, head_dim, requires_grad=True)
    forms = {"kernel form": lambda: taylor_attention_quadratic(q, k, v, normalize=False),
             "features": lambda: causal_linear_attention(taylor_feature_map(q), taylor_feature_map(k), v,
                                                         normalize=False)[0]}
    best = dict.fromkeys(forms, float("inf"))
    for _ in range(repeats):
        for name, form in forms.items():
            start = time.perf_counter()
            form().square().sum().backward()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def warmup_steps(args) -> int:
    return max(1, min(args.warmup, args.steps // 5))


def schedule_name(args) -> str:
    return f"wsd, decaying over the last {args.decay_fraction:g}" if args.schedule == "wsd" else args.schedule


def lr_factor(step: int, args) -> float:
    """The learning rate's multiplier at ``step``: a linear warm-up, then constant, a cosine decay to 0 at
    ``--steps`` (``--schedule cosine``), or constant until the last ``--decay-fraction`` of the steps and
    a linear decay to 0 over them (``--schedule wsd``, warm-up/stable/decay: the rate stays high while the
    model is still learning, which a cosine over the whole run does not)."""
    warmup = warmup_steps(args)
    if step < warmup:
        return (step + 1) / warmup
    if args.schedule == "constant":
        return 1.0
    if args.schedule == "wsd":
        decay = max(1, round(args.decay_fraction * args.steps))
        return min(1.0, (args.steps - step) / decay)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))


def header(argv) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (f"`python -m bench.mqar {' '.join(argv)}` — {now:%Y-%m-%d %H:%M} UTC, "
            f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["zoology", "slots"], default="zoology",
                        help="zoology: Zoology's MQAR (vocabulary --vocab, one power-law-placed query per key; "
                             "default); slots: the CPU variant of issue 4 (vocabulary 256, queries in every slot)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary of the zoology task")
    parser.add_argument("--seq-lens", type=parse_ints, default=None, metavar="S,S,...",
                        help="default: 64,128,256 (zoology), 64 (slots)")
    parser.add_argument("--pairs", type=parse_ints, default=None, metavar="K,K,...",
                        help="key-value pairs, matched one-to-one with --seq-lens unless --grid; default: "
                             "4,8,16 (zoology), 4 (slots)")
    parser.add_argument("--grid", action="store_true", help="run every seq_len x pairs combination")
    parser.add_argument("--queries", type=int, default=None, metavar="Q",
                        help="queries per sequence (default: every two-token slot after the pairs; "
                             "--queries equal to the pairs is Zoology's one query per key)")
    parser.add_argument("--widths", type=parse_ints, default=None, metavar="D,D,...",
                        help="default: 64,128,256 (zoology), 64,128 (slots)")
    parser.add_argument("--modes", type=lambda text: text.split(","), default=list(DEFAULT_MODES), metavar="M,M,...",
                        help=f"any of {', '.join(ALL_MODES)}")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lrs", type=lambda text: [float(x) for x in text.split(",")], default=None,
                        metavar="LR,LR,...", help="learning rates swept per cell, the best kept; default: "
                        "Zoology's 1e-4,4.6e-4,2.2e-3,1e-2 (zoology), 1e-3 (slots)")
    parser.add_argument("--stop-at", type=float, default=0.0, metavar="ACC",
                        help="stop a run early once its test accuracy at a --log-every check reaches ACC")
    parser.add_argument("--warmup", type=int, default=40, help="linear warm-up steps (at most steps / 5)")
    parser.add_argument("--schedule", choices=["constant", "cosine", "wsd"], default="constant",
                        help="after the warm-up: constant, a cosine decay to 0 at --steps, or (wsd) constant "
                             "and then a linear decay to 0 over the last --decay-fraction of the steps")
    parser.add_argument("--decay-fraction", type=float, default=0.2,
                        help="with --schedule wsd: the share of --steps over which the rate decays to 0")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--init", type=lambda text: text.split(","), default=None, metavar="INIT,INIT",
                        help="WDAConfig.init of every model, one or both of release (PyTorch's defaults; default for "
                             "slots, where under normal no model, softmax included, got past guessing among the values "
                             "in context within 2,000 steps at seq 64) and normal (N(0, 0.02); default for zoology, "
                             "where with tied embeddings release-initialised softmax stayed at accuracy 0 and a loss "
                             "above ln(8192) for 400 steps: its N(0, 1) embeddings make logits of std ~sqrt(width))")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--tie", action=argparse.BooleanOptionalAction, default=None,
                        help="tie the LM head to the token embeddings (default: on for zoology, where an untied "
                             "softmax model stayed at loss ~ln(4096) for 500 steps at seq 64, off for slots)")
    parser.add_argument("--ffn", action=argparse.BooleanOptionalAction, default=None,
                        help="the FFN after each mixer (default: off for zoology, whose MQAR configs use an identity "
                             "state mixer, on for slots)")
    parser.add_argument("--content-mix", type=float, default=0.5, help="content_mix of the prefix-content mode")
    parser.add_argument("--content-rank", type=int, default=16, help="content_rank of the prefix-content mode")
    parser.add_argument("--test-size", type=int, default=256, help="held-out sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=0, metavar="N",
                        help="print the train loss and test accuracy every N steps (stderr)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--time-taylor", action="store_true",
                        help="only time the Taylor content path's kernel and feature forms (forward + backward) "
                             "at --batch x the first --seq-lens, rank --content-rank, width 128 in --heads heads")
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny configuration (seq 32, 2 pairs, width 32, 3 steps) of every mode given "
                             "(default: the default modes), to check the script runs")
    args = parser.parse_args(argv)
    zoology = args.task == "zoology"
    args.seq_lens = args.seq_lens or ([64, 128, 256] if zoology else [64])
    args.pairs = args.pairs or ([4, 8, 16] if zoology else [4])
    args.widths = args.widths or ([64, 128, 256] if zoology else [64, 128])
    args.lrs = args.lrs or (ZOOLOGY_LRS if zoology else [1e-3])
    args.tie = zoology if args.tie is None else args.tie
    args.ffn = not zoology if args.ffn is None else args.ffn
    args.init = args.init or (["normal"] if zoology else ["release"])
    if args.smoke:
        args.seq_lens, args.pairs, args.widths, args.grid = [32], [2], [32], False
        args.steps, args.batch, args.test_size, args.lrs, args.vocab = 3, 4, 8, args.lrs[:1], 64
    if set(args.init) - set(INIT_SCHEMES):
        parser.error(f"unknown --init {sorted(set(args.init) - set(INIT_SCHEMES))}; choose from {', '.join(INIT_SCHEMES)}")
    if not 0 < args.decay_fraction <= 1:
        parser.error(f"--decay-fraction must be in (0, 1], got {args.decay_fraction:g}")
    unknown = sorted(set(args.modes) - set(ALL_MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(ALL_MODES)}")
    if args.grid:
        settings = [(s, k) for s in args.seq_lens for k in args.pairs if s >= 4 * k]
    elif len(args.seq_lens) != len(args.pairs):
        parser.error("--seq-lens and --pairs pair up one-to-one (give as many of each) unless --grid")
    else:
        settings = list(zip(args.seq_lens, args.pairs))
    if args.threads:
        torch.set_num_threads(args.threads)

    print(header(sys.argv[1:] if argv is None else argv), flush=True)
    if args.time_taylor:
        best = time_taylor_forms(args.batch, args.seq_lens[0], args.heads, args.content_rank, 128 // args.heads)
        print(", ".join(f"{name} {seconds:.3f} s" for name, seconds in best.items()) +
              f"; features / kernel form = {best['features'] / best['kernel form']:.1f}x")
        return 0
    began = time.perf_counter()
    rows = []
    for init, width, (seq_len, pairs), mode in itertools.product(args.init, args.widths, settings, args.modes):
        sweep = []
        for lr in args.lrs:
            sweep.append(run_one(mode, width, seq_len, pairs, init, args, lr))
            row = sweep[-1]
            print(f"  {mode} init {init} width {width} seq {seq_len} pairs {pairs} lr {lr:g}: accuracy "
                  f"{row['accuracy']:.3f} (first queries {row['first']:.3f}), final train loss "
                  f"{row['loss']:.3f}, {row['steps']} steps, {row['seconds']:.1f} s", file=sys.stderr, flush=True)
        best = max(sweep, key=lambda r: r["accuracy"])
        rows.append(dict(best, sweep=", ".join(f"{r['lr']:g}: {r['accuracy']:.3f}" for r in sweep)))
    total = time.perf_counter() - began

    if zoology:
        task = (f"Zoology MQAR, vocabulary {args.vocab} (keys from the first half, values from the second, filler 0), "
                "one query per key at power-law gaps (a = 0.01)")
    else:
        queries = "every slot after the pairs" if args.queries is None else f"{args.queries} per sequence"
        task = f"MQAR slots, vocabulary {VOCAB} (keys 1-127, values 128-255, filler 0), queries: {queries}"
    print(f"\n{task}; 2 layers, "
          f"{args.heads} heads, {'tied' if args.tie else 'untied'} embeddings; up to {args.steps} steps x batch {args.batch}"
          f"{f' (stopping at test accuracy {args.stop_at:g})' if args.stop_at else ''}, "
          f"AdamW at the best of lr {', '.join(f'{lr:g}' for lr in args.lrs)} "
          f"(warm-up {warmup_steps(args)} steps, then {schedule_name(args)}, weight decay {args.weight_decay:g}, clip 1), "
          f"seed {args.seed}. Accuracy over the queries of {args.test_size} held-out sequences; first-query accuracy "
          "over each key's first query (answer only in the pairs). "
          f"prefix-content: content_mix {args.content_mix:g}, learned, rank {args.content_rank}; prefix and static: "
          "the cpu-tiny preset's content path (content_mix 0.15, rank 4); the recall modes: content rank "
          f"{args.content_rank}, options in bench/mqar.py RECALL_MODES. Decoding state: floats the cache holds "
          "after one full-length sequence, all layers.\n")
    print("| mode | init | width | seq_len | pairs | parameters | test accuracy | first-query accuracy | best lr | steps "
          "| decoding state (floats) | accuracy per lr | wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['init']} | {r['width']} | {r['seq_len']} | {r['pairs']} | {r['params']:,} | "
              f"{r['accuracy']:.3f} | {r['first']:.3f} | {r['lr']:g} | {r['steps']} | {r['state']:,} | {r['sweep']} "
              f"| {r['seconds']:.1f} s |")
    print(f"\nTotal wall time: {total:.0f} s ({total / 60:.1f} min).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
