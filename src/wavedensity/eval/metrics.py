"""Honest language-model numbers: loss, perplexity, bits per byte, and routing health.

Bits per byte = total nats / (ln 2 x UTF-8 bytes of the predicted tokens), so models with
different tokenizers are compared on the same text.
"""

import contextlib
import math

import torch
import torch.nn.functional as F

from ..progress import progress_bar


def token_nats(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood ``[B, S]`` of ``labels`` (0 where labels == -100), teacher-forced."""
    logits = model(input_ids, use_cache=False).logits.float()
    nats = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    return nats * (labels != -100)


def per_prefix_nats(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token NLL when token t+1 is predicted from a pass over tokens 0..t alone.

    This is what generation sees. For causal routing it equals the teacher-forced number; for the
    release's pooled routing it is the honest one (docs/architecture.md §3). Runs through the decoding cache,
    which for pooled routing re-runs the window at every step.
    """
    out, rows = None, []
    for t in range(input_ids.shape[1]):
        out = model(input_ids[:, t : t + 1], cache=None if out is None else out.cache, use_cache=True)
        rows.append(out.logits[:, -1].float())
    logits = torch.stack(rows, dim=1)
    nats = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    return nats * (labels != -100)


def batched_windows(windows, batch_size: int, max_windows: int | None = None):
    """Stack consecutive equal-length windows into batches (the last, shorter window goes alone)."""
    pending = []
    for index, window in enumerate(windows):
        if max_windows is not None and index >= max_windows:
            break
        if pending and (len(pending) == batch_size or window[0].shape != pending[0][0].shape):
            yield tuple(torch.stack(parts) for parts in zip(*pending))
            pending = []
        pending.append(window)
    if pending:
        yield tuple(torch.stack(parts) for parts in zip(*pending))


@torch.no_grad()
def evaluate(model, windows, *, per_prefix: bool = False, max_windows: int | None = None, batch_size: int = 16,
             rank: int = 0, world_size: int = 1, progress: bool = False, desc: str = "eval") -> dict:
    """Loss over evaluation windows ``(input_ids [S], labels [S], label_bytes [S])``.

    Returns loss per predicted token (nats), perplexity, bits per byte and the counts behind them.
    In a torch.distributed run (``world_size`` > 1) rank r evaluates batches r, r + world_size, ...
    and the sums are all-reduced, so every rank returns the numbers of the whole set.
    ``progress``: a bar (``desc``) over this rank's batches with the time left (``progress.progress_bar``).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = list(batched_windows(windows, batch_size, max_windows))
    if not batches:
        raise ValueError("nothing to evaluate: no evaluation windows")
    sums = torch.zeros(3, dtype=torch.float64)  # nats, predicted tokens, bytes
    # Every rank runs the same number of passes (the last rounds repeat a batch and discard it):
    # a sharded (FSDP2) model gathers its parameters collectively in each pass.
    rounds = -(-len(batches) // world_size)
    for index in progress_bar(range(rank, rounds * world_size, world_size), show=progress, desc=desc, unit="batch",
                              leave=False):
        input_ids, labels, label_bytes = batches[min(index, len(batches) - 1)]
        nats = (per_prefix_nats if per_prefix else token_nats)(model, input_ids.to(device), labels.to(device))
        if index < len(batches):
            sums += torch.tensor([float(nats.sum()), int((labels != -100).sum()), int(label_bytes.sum())],
                                 dtype=torch.float64)
    if world_size > 1:
        sums = sums.to(device)  # NCCL reduces GPU tensors only
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    nats_total, tokens, n_bytes = float(sums[0]), int(sums[1]), int(sums[2])
    if tokens == 0:
        raise ValueError("nothing to evaluate: the evaluation data produced no predicted tokens")
    loss = nats_total / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": nats_total / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "tokens": tokens,
        "bytes": n_bytes,
    }


@torch.no_grad()
def routing_health(model, input_ids: torch.Tensor, whole=lambda layer: contextlib.nullcontext()) -> dict:
    """Mask usage of every WDA layer on a batch: how evenly the masks are used.

    usage[h, m] = mean routing weight of mask m in head h over batch and positions. The entropy of
    that distribution (nats) and its exponential, the effective number of masks used, fall when
    routing collapses onto few masks; they are reported as means over layers and heads.
    ``whole(layer)``: a context in which the layer's parameters are whole (FSDP2 shards them between passes).
    """
    if "wda" not in model.config.layer_mixers():
        return {}
    was_training = model.training
    model.eval()
    hidden = model(input_ids, use_cache=False, output_hidden_states=True).hidden_states
    entropies = []
    for index, layer in enumerate(model.model.layers):
        if not hasattr(layer.mixer, "routing_weights"):
            continue  # a softmax layer of a hybrid stack (mixer_types)
        with whole(layer):
            weights = layer.mixer.routing_weights(hidden[index])  # [B|1, H, T, M]
        usage = weights.float().mean(dim=(0, 2))
        usage = usage / usage.sum(-1, keepdim=True)
        entropies.append(-(usage * usage.clamp_min(1e-12).log()).sum(-1))
    entropy = torch.cat(entropies)
    model.train(was_training)
    return {"mask_entropy": float(entropy.mean()), "effective_masks": float(entropy.exp().mean())}
