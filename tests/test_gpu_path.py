"""The GPU path, checked on the CPU: compiled blocks have no graph breaks, the Toeplitz path choice
depends on the device, and the device check script runs (tiny sizes)."""

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from conftest import tiny_config, tiny_model
from wavedensity.layers import WaveDensityAttention, WDABlock

# Each routing and Toeplitz path a training step can take; compile (the "compile" training setting)
# compiles each block, so a break here would split the hot path.
BLOCKS = {
    "prefix dense": dict(routing="prefix"),
    "prefix tiled": dict(routing="prefix", toeplitz_path="tiled", tiled_block=16),
    "static fft": dict(routing="static", toeplitz_path="fft"),
    "pooled fft": dict(routing="pooled", gate="release", toeplitz_path="fft"),
    "stochastic density": dict(use_sampling=True, num_samples=2, noise_sigma=0.5),
    "softmax": dict(mixer="softmax"),
}


@pytest.mark.parametrize("name", BLOCKS)
def test_a_training_block_compiles_to_one_graph(name):
    block = WDABlock(tiny_config(**BLOCKS[name])).train()
    x = torch.randn(2, 48, block.ln_attn.normalized_shape[0], requires_grad=True)
    try:
        explained = torch._dynamo.explain(block)(x)
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_the_whole_training_forward_compiles_to_one_graph():
    """Input checks that read values (a host sync on accelerators) stay out of compiled training."""
    model = tiny_model().train()
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    try:
        explained = torch._dynamo.explain(model)(ids, shift_labels=ids, use_cache=False)
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


def test_toeplitz_path_choice_depends_on_the_device():
    layer = WaveDensityAttention(tiny_config(routing="static", seq_len=4096)).train()
    assert [layer.pick_path(n, True, "cpu") for n in (256, 257)] == ["dense", "fft"]
    assert [layer.pick_path(n, True, "cuda") for n in (257, 1024, 1025)] == ["dense", "dense", "fft"]
    assert layer.pick_path(4096, False, "cuda") == "tiled"  # per-position kernels tile by memory on every device


def test_compiled_blocks_train_like_the_eager_model():
    eager = tiny_model().train()
    compiled = tiny_model().train()
    compiled.load_state_dict(eager.state_dict())
    counter = torch._dynamo.testing.CompileCounter()  # a backend that counts the graphs dynamo hands it
    assert compiled.compile_blocks(backend=counter) is compiled
    ids = torch.randint(0, eager.config.vocab_size, (2, 24))
    try:
        losses = [model(ids, shift_labels=ids, use_cache=False).loss for model in (eager, compiled)]
        for loss in losses:
            loss.backward()
    finally:
        torch._dynamo.reset()
    assert all(block._compiled_call_impl is not None for block in compiled.model.layers)
    assert counter.frame_count > 0  # the blocks' forward really went through torch.compile
    torch.testing.assert_close(losses[1], losses[0])
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
