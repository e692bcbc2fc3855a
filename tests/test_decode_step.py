"""The one-token decoding step (kernel row from the reversed masks, running routing sum, linear-attention
state update) against the general path and against recomputation, float64, histories 0, 1, 62, 256."""

import pytest
import torch

from conftest import tiny_model
from wavedensity.ops import linear_attention_terms

HISTORIES = [0, 1, 62, 256]
MODES = [
    dict(routing="prefix"),
    dict(routing="static"),
    dict(routing="prefix", kernel_mix="density"),
    dict(routing="prefix", use_sampling=True),
    dict(routing="prefix", learned_content=False, content_feature_map="taylor", content_conv=3),
]


def step_logits(model, ids, history: int, general: bool) -> torch.Tensor:
    """Logits of token ``history`` decoded as one step after a cached prefill of ``history`` tokens
    (none: the step is the first call). ``general``: under autograd, where the wave context takes the
    general (per-position / Toeplitz) path."""
    with torch.no_grad():
        cache = model(ids[:, :history], use_cache=True).cache if history else None
    with torch.enable_grad() if general else torch.no_grad():
        out = model(ids[:, history : history + 1], cache=cache, use_cache=True)
    return out.logits[:, -1].detach()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_one_token_step_equals_general_path_and_recomputation(mode):
    model = tiny_model(dtype=torch.float64, seq_len=257, **mode)
    ids = torch.randint(0, 37, (2, 257), generator=torch.Generator().manual_seed(3))
    for history in HISTORIES:
        fast = step_logits(model, ids, history, general=False)
        with torch.no_grad():
            recomputed = model(ids[:, : history + 1], use_cache=False).logits[:, -1]
        torch.testing.assert_close(fast, step_logits(model, ids, history, general=True), atol=1e-10, rtol=0)
        torch.testing.assert_close(fast, recomputed, atol=1e-10, rtol=0)


@pytest.mark.parametrize("history", HISTORIES)
def test_one_token_linear_attention_equals_the_chunked_form(history):
    g = torch.Generator().manual_seed(history)
    q, k = (torch.rand(2, 3, history + 1, 5, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, history + 1, 7, generator=g, dtype=torch.float64)
    numerator, denominator, _ = linear_attention_terms(q, k, v)  # all positions at once, chunked
    state = None
    if history:
        *_, state = linear_attention_terms(q[..., :history, :], k[..., :history, :], v[..., :history, :])
    one = linear_attention_terms(q[..., history:, :], k[..., history:, :], v[..., history:, :], state)
    torch.testing.assert_close(one[0], numerator[..., history:, :], atol=1e-12, rtol=0)
    torch.testing.assert_close(one[1], denominator[..., history:, :], atol=1e-12, rtol=0)
    *_, full_state = linear_attention_terms(q, k, v)
    for got, expected in zip(one[2], full_state):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
