import sys
import warnings
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # release_reference.py, the float64 oracle of the released forward
SHARED = TESTS.parents[1] / "shared"

import wavedensity  # noqa: E402

# Tiny models gain nothing from more threads, and on a shared 2-core machine spinning OpenMP
# threads slow each small op down many times over.
torch.set_num_threads(1)
from wavedensity.layers import NonCausalRoutingWarning  # noqa: E402


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
            if any(part in name for part in ("gate_", "scale_", "static_summary", "q_mod", "k_mod")):
                param.normal_(0.0, 0.3)
    return model.to(dtype).eval()
