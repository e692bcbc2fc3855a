"""``WDAConfig.init``: the release's initialisation (PyTorch defaults) and the HF normal one; loads keep weights."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from wavedensity import WDAConfig, WDAForCausalLM, preset_config
from wavedensity.train import preset_train_config

# wide enough that sample standard deviations sit within a few percent of the distribution's
SHAPE = dict(vocab_size=300, embed_dim=96, num_heads=3, gate_hidden=64)
MODELS = [dict(routing="prefix"), dict(routing="static"), dict(mixer="softmax")]


def build(init: str, **overrides) -> WDAForCausalLM:
    torch.manual_seed(0)
    return WDAForCausalLM(tiny_config(**SHAPE, init=init, **overrides))


@pytest.mark.parametrize("mode", MODELS, ids=lambda m: "-".join(m.values()))
def test_release_init_draws_pytorch_defaults(mode):
    model = build("release", **mode)
    embedding = model.model.embed_tokens.weight
    assert abs(embedding.std().item() - 1.0) < 0.05
    assert torch.count_nonzero(model.model.pos_emb) == 0
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) > 5
    for name, linear in linears:
        bound = 1 / math.sqrt(linear.in_features)  # kaiming-uniform with a=sqrt(5): U(-bound, bound)
        assert linear.weight.abs().max() <= bound, name
        assert abs(linear.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.1, name
        if linear.bias is not None:
            assert linear.bias.abs().max() <= bound and linear.bias.abs().max() > bound / 4, name
    for norm in (m for m in model.modules() if isinstance(m, nn.LayerNorm)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.count_nonzero(norm.bias) == 0


def test_release_init_of_the_wave_layer():
    layer = build("release", num_masks=16, num_waves_per_mask=8, topk_masks=8).model.layers[0].mixer  # 384 waves
    assert abs(layer.freqs.std().item() - 1.5) < 0.15 and abs(layer.amps.mean().item() - 0.5) < 0.005
    assert abs(layer.phases.std().item() - math.pi) < 0.4 and abs(layer.mod_basis.std().item() - 0.05) < 0.01
    bound = 1 / math.sqrt(SHAPE["gate_hidden"])  # the release's per-head nn.Linear(gate_hidden, ...)
    for tensor in (layer.gate_out_weight, layer.gate_out_bias, layer.scale_out_weight, layer.scale_out_bias):
        assert tensor.abs().max() <= bound and tensor.abs().max() > bound / 2
    assert abs(layer.gate_out_weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.15


@pytest.mark.parametrize("mode", MODELS, ids=lambda m: "-".join(m.values()))
def test_normal_init_draws_small_weights(mode):
    model = build("normal", **mode)
    assert abs(model.model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert abs(model.model.pos_emb.std().item() - 0.02) < 0.002
    for name, linear in ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)):
        assert abs(linear.weight.std().item() - 0.02) < 0.004, name
        assert linear.bias is None or torch.count_nonzero(linear.bias) == 0, name


def test_from_config_honours_init():
    for init in ("release", "normal"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(**SHAPE, init=init))
        expected = 1.0 if init == "release" else 0.02
        assert abs(model.model.embed_tokens.weight.std().item() / expected - 1) < 0.1


@pytest.mark.parametrize("saved_init,loaded_init", [("normal", "release"), ("release", "normal")])
def test_loading_never_reinitialises_loaded_tensors(tmp_path, saved_init, loaded_init):
    model = build(saved_init)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.25)  # values no initialisation draws (pos_emb, LayerNorm, ...)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "init": loaded_init}))
    saved = model.state_dict()

    loaded = WDAForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.init == loaded_init
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())

    # a checkpoint missing tensors beside loaded ones of the same module: only the missing ones are drawn,
    # by the loaded config's scheme
    weights = load_file(tmp_path / "model.safetensors")
    missing = {"model.pos_emb", "model.layers.0.mixer.freqs", "model.layers.0.ffn.0.bias"}
    save_file({k: v for k, v in weights.items() if k not in missing}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    partial = WDAForCausalLM.from_pretrained(tmp_path)
    for key, value in partial.state_dict().items():
        assert torch.equal(saved[key], value) == (key not in missing), key
    pos_emb, bias = partial.model.pos_emb, partial.model.layers[0].ffn[0].bias
    if loaded_init == "release":
        assert torch.count_nonzero(pos_emb) == 0 and 0 < bias.abs().max() <= 1 / math.sqrt(SHAPE["embed_dim"])
    else:
        assert abs(pos_emb.std().item() - 0.02) < 0.005 and torch.count_nonzero(bias) == 0
    assert 1.0 < partial.model.layers[0].mixer.freqs.std() < 2.0


def test_unknown_init_is_rejected_by_name():
    with pytest.raises(Exception, match="init"):
        WDAConfig(init="kaiming")


def test_the_130m_preset_and_the_paper_recipe_train_the_release_way():
    assert preset_config("wda-130m").init == "release"
    paper = preset_train_config("wda-130m-paper")
    assert preset_config(paper.preset, **paper.model).init == "release"
