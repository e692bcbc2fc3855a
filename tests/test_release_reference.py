"""The float64 reference reproduces the shared release-format test vectors to 1e-8."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release_reference import per_prefix_logits, release_reference_logits  # noqa: E402

safetensors_torch = pytest.importorskip("safetensors.torch")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VECTORS = SHARED / "testvectors"
CASES = sorted(p.name for p in VECTORS.iterdir() if p.is_dir()) if VECTORS.is_dir() else []
TOL = 1e-8


def load_case(name):
    if not VECTORS.is_dir():
        pytest.skip(f"shared test vectors not found at {VECTORS}")
    folder = VECTORS / name
    config = json.loads((folder / "config.json").read_text())
    state_dict = safetensors_torch.load_file(str(folder / "model.safetensors"))
    expected = safetensors_torch.load_file(str(folder / "expected.safetensors"))
    return config, state_dict, expected


def test_vectors_present():
    if not VECTORS.is_dir():
        pytest.skip(f"shared test vectors not found at {VECTORS}")
    assert CASES, f"no test-vector cases under {VECTORS}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("semantics", ["pooled", "prefix", "per_prefix"])
def test_release_reference_matches_vectors(case, semantics):
    config, state_dict, expected = load_case(case)
    ids = expected["input_ids"]
    if semantics == "per_prefix":
        got = per_prefix_logits(state_dict, config, ids)
    else:
        got = release_reference_logits(state_dict, config, ids, semantics)
    want = expected[f"logits_{semantics}"]
    assert got.dtype == torch.float64 and got.shape == want.shape
    err = (got - want).abs().max().item()
    assert err <= TOL, f"{case}/{semantics}: max abs error {err:.3e} > {TOL:g}"
