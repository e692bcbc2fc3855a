"""docs/architecture.md §3.3: causal modes never read the future, in every compute path; pooled does, and we show it."""

import pytest
import torch

from conftest import tiny_model
from wavedensity.layers import NonCausalRoutingWarning

PREFIX_LENGTHS = [1, 3, 7, 15, 31, 32, 63]
CAUSAL = [
    ("prefix", "dense", {}),
    ("prefix", "tiled", {"tiled_block": 8}),
    ("prefix", "dense", {"learned_content": False}),
    ("static", "fft", {}),
    ("static", "dense", {}),
    ("static", "tiled", {"tiled_block": 8}),
    ("prefix", "auto", {"use_sampling": True}),
    ("static", "fft", {"use_sampling": True}),
    ("prefix", "fft", {"kernel_mix": "density"}),
    ("prefix", "dense", {"kernel_mix": "density"}),
    ("prefix", "tiled", {"kernel_mix": "density", "tiled_block": 8}),
    ("static", "fft", {"kernel_mix": "density"}),
    ("prefix", "fft", {"kernel_mix": "density", "use_sampling": True}),
]
TRAINING = [("prefix", "dense", {}), ("prefix", "tiled", {}), ("static", "auto", {}), ("static", "fft", {}),
            ("static", "tiled", {}), ("prefix", "fft", {"kernel_mix": "density"})]
# FFT mixes all positions in floating point: future inputs reach the past only as float64 round-off.
TOLERANCE = {"fft": 1e-12}


@pytest.mark.parametrize("routing,path,extra", CAUSAL)
def test_changing_the_future_leaves_prefix_logits_unchanged(routing, path, extra):
    model = tiny_model(routing=routing, toeplitz_path=path, dtype=torch.float64, **extra)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 37, (2, 64), generator=g)
    with torch.no_grad():
        base = model(ids, use_cache=False).logits
        for n in PREFIX_LENGTHS:
            changed = ids.clone()
            changed[:, n:] = torch.randint(0, 37, changed[:, n:].shape, generator=g)
            logits = model(changed, use_cache=False).logits
            err = (logits[:, :n] - base[:, :n]).abs().max().item()
            assert err <= TOLERANCE.get(path, 0.0), f"prefix {n}: logits moved by {err:.2e}"
            assert (logits[:, n:] - base[:, n:]).abs().max() > 1e-6  # the change did reach the future


@pytest.mark.parametrize("routing,path,extra", CAUSAL)
def test_gradient_of_past_logits_wrt_future_inputs_is_zero(routing, path, extra):
    model = tiny_model(routing=routing, toeplitz_path=path, dtype=torch.float64, **extra)
    ids = torch.randint(0, 37, (1, 64), generator=torch.Generator().manual_seed(1))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits
    for t in [0, 10, 31, 62]:
        (grad,) = torch.autograd.grad(logits[0, t].sum(), embeds, retain_graph=True)
        future = grad[0, t + 1 :].abs().max().item()
        assert future <= TOLERANCE.get(path, 0.0), f"d logits[{t}] / d inputs[>{t}] = {future:.2e}"
        assert grad[0, : t + 1].abs().max() > 0


@pytest.mark.parametrize("routing,path,extra", TRAINING)
def test_training_mode_stochastic_density_is_causal(routing, path, extra):
    """Sampled step densities have exact zeros; every path must still keep the future out."""
    model = tiny_model(routing=routing, toeplitz_path=path, use_sampling=True, num_samples=2, noise_sigma=0.3,
                       tiled_block=8, seq_len=200, dtype=torch.float64, **extra).train()
    ids = torch.randint(0, 37, (1, 200), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 150:] = (changed[:, 150:] + 1) % 37
    with torch.no_grad():
        torch.manual_seed(0)
        base = model(ids, use_cache=False).logits
        torch.manual_seed(0)
        other = model(changed, use_cache=False).logits
    assert torch.equal(base[:, :150], other[:, :150])


def test_pooled_routing_reads_the_future_and_says_so():
    """The release's semantics, kept for released checkpoints: documented non-causal."""
    with pytest.warns(NonCausalRoutingWarning, match="depend on future tokens"):
        model = tiny_model(routing="pooled", gate="release", dtype=torch.float64)
    ids = torch.randint(0, 37, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model(ids, use_cache=False).logits
        changed = ids.clone()
        changed[:, 40:] = (changed[:, 40:] + 1) % 37
        moved = (model(changed, use_cache=False).logits[:, :40] - base[:, :40]).abs().max().item()
    assert moved > 1e-6, "pooled routing is expected to leak: logits before 40 depend on tokens 40..63"
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits
    (grad,) = torch.autograd.grad(logits[0, 10].sum(), embeds)
    assert grad[0, 11:].abs().max() > 0, "logits at 10 have gradient from inputs 11..63 under pooled routing"


@pytest.mark.parametrize("kernel_mix", ["logit", "density"])
def test_fft_rows_after_the_exact_head_keep_the_future_out(kernel_mix):
    """At 64 tokens every FFT row lies in the exact head (128 rows); at 300 the FFT computes rows 128..299."""
    routing = "prefix" if kernel_mix == "density" else "static"
    model = tiny_model(routing=routing, toeplitz_path="fft", kernel_mix=kernel_mix, seq_len=300, dtype=torch.float64)
    ids = torch.randint(0, 37, (1, 300), generator=torch.Generator().manual_seed(4))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits
    for t in [130, 200, 298]:
        (grad,) = torch.autograd.grad(logits[0, t].sum(), embeds, retain_graph=True)
        assert grad[0, t + 1 :].abs().max().item() <= TOLERANCE["fft"], f"d logits[{t}] / d inputs[>{t}]"
        assert grad[0, : t + 1].abs().max() > 0
