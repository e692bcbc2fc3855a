import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # release_reference.py, the float64 oracle of the released forward
SHARED = TESTS.parents[1] / "shared"

import wavedensity  # noqa: E402

# Tiny models gain nothing from more threads, and on a shared 2-core machine spinning OpenMP
# threads slow each small op down many times over.
torch.set_num_threads(1)
from wavedensity.layers import NonCausalRoutingWarning  # noqa: E402
from wavedensity.transplant import WDATransplantForCausalLM, trainable_parameters  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet_pooled_warning():
    # The pooled-routing warning is asserted where it matters (test_causality); elsewhere it is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonCausalRoutingWarning)
        yield


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (tests expect ../shared beside the repository)")
    return SHARED


def tiny_config(**overrides) -> "wavedensity.WDAConfig":
    """A small WDA config that exercises every part (content path on, odd sizes)."""
    base = dict(vocab_size=37, seq_len=64, embed_dim=24, num_layers=2, num_heads=3, num_masks=5,
                num_waves_per_mask=3, topk_masks=2, content_rank=4, content_mix=0.2, gate_hidden=16)
    return wavedensity.WDAConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, dtype=torch.float32, **overrides) -> "wavedensity.WDAForCausalLM":
    """A tiny model whose routing really depends on content.

    At the default init (std 0.02) the gate logits are nearly equal for every context, so a leak
    through routing would be ~1e-8; weights of std 0.3 make routing (and any leak) visible.
    """
    torch.manual_seed(seed)
    model = wavedensity.WDAForCausalLM(tiny_config(**overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in ("gate_", "scale_", "static_summary")):
                param.normal_(0.0, 0.3)
            elif name.endswith("mixer.in_proj.weight") or name.endswith("mixer.in_proj.bias"):
                param[model.config.embed_dim :].normal_(0.0, 0.3)  # the modulators' and routing MLPs' rows
    return model.to(dtype).eval()


# ---- tiny random-weight teachers of each family the transplant supports, built from configs ----------

TEACHER_FAMILIES = ["llama", "qwen2", "gemma3", "gpt2"]
TEACHER_VOCAB = 41
# WDA branch settings small enough for these teachers
TINY_BRANCH = dict(seq_len=32, num_masks=4, num_waves_per_mask=2, topk_masks=2, gate_hidden=8, content_rank=2)


def tiny_teacher(family: str, vocab: int = TEACHER_VOCAB):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=24, intermediate_size=48, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if family == "llama":  # SmolLM's architecture (tied embeddings)
        return LlamaForCausalLM(LlamaConfig(**common, num_hidden_layers=2, tie_word_embeddings=True)).eval()
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, num_hidden_layers=2)).eval()
    if family == "gemma3":  # sliding-window and global layers, head_dim independent of the width
        return Gemma3ForCausalLM(Gemma3TextConfig(
            **{**common, "num_attention_heads": 2, "num_key_value_heads": 1}, head_dim=16, num_hidden_layers=3,
            sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention"])).eval()
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=24, n_layer=2, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=0)).eval()
    raise ValueError(family)


def tiny_transplant(family: str, layers=None, *, teacher=None, base_model: str | None = None, **wda):
    """``tiny_teacher(family)`` (or ``teacher``) with WDA branches in ``layers`` (default all), gamma 0.7
    and routing weights that depend on content."""
    teacher = teacher if teacher is not None else tiny_teacher(family)
    layers = layers if layers is not None else list(range(teacher.config.num_hidden_layers))
    model = WDATransplantForCausalLM.from_teacher(teacher, base_model or f"tiny-{family}", layers,
                                                  {**TINY_BRANCH, **wda})
    with torch.no_grad():
        for name, param in trainable_parameters(model).items():
            if name.endswith(".gamma"):
                param.fill_(0.7)
            elif "gate_" in name or "scale_" in name:
                param.normal_(0.0, 0.3)
    return model.eval()
