"""``WDAForCausalLM.use_decoding_layout()``: column-major linear weights decode like the row-major model,
keep the state dict and the tied head, save contiguously and switch back."""

import pytest
import torch
from torch import nn

from conftest import tiny_model
from wavedensity import WDAForCausalLM

CONFIGS = {
    "prefix, taylor content, conv": dict(routing="prefix", content_feature_map="taylor", content_conv=3),
    "static, tied embeddings": dict(routing="static", tie_word_embeddings=True),
    "softmax": dict(mixer="softmax"),
    "hybrid, windows": dict(mixer_types=["wda", "softmax"], softmax_window=6, sliding_window=4),
}


def greedy(model, ids, new: int = 6):
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, output_scores=True,
                         return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


def linear_weights(model) -> list[torch.Tensor]:
    return [module.weight for module in model.modules() if isinstance(module, nn.Linear)]


@pytest.mark.parametrize("name", CONFIGS)
def test_the_decoding_layout_decodes_like_the_row_major_model(name):
    model = tiny_model(**CONFIGS[name]).eval()
    ids = torch.randint(0, 37, (2, 7), generator=torch.Generator().manual_seed(0))
    row_ids, row_scores = greedy(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    assert model.use_decoding_layout() is model
    assert all(w.t().is_contiguous() and not w.is_contiguous() for w in linear_weights(model))
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == model.config.tie_word_embeddings  # a tied pair stays one parameter
    column_ids, column_scores = greedy(model, ids)
    assert torch.equal(column_ids, row_ids)
    torch.testing.assert_close(column_scores, row_scores, atol=1e-5, rtol=0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    model.use_decoding_layout(False)
    assert all(w.is_contiguous() for w in linear_weights(model))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_model_in_the_decoding_layout_saves_and_loads(tmp_path):
    model = tiny_model().use_decoding_layout()
    model.save_pretrained(tmp_path)
    loaded = WDAForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
