"""``WDAForCausalLM.compile_decoding()``: ``generate`` with compiled one-token steps equals eager decoding,
and weights compiled in as constants are never used after they change."""

import pytest
import torch

from conftest import tiny_model


def greedy(model, ids, new: int = 6):
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, output_scores=True,
                         return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


def test_compiled_decoding_equals_eager_and_refuses_changed_frozen_weights():
    model = tiny_model(routing="prefix", content_feature_map="taylor", content_conv=3)
    ids = torch.randint(0, 37, (2, 7), generator=torch.Generator().manual_seed(0))
    eager_ids, eager_scores = greedy(model, ids)
    calls = []
    model.compile_decoding()
    compiled_logits = model._compiled_logits
    model._compiled_logits = lambda *args: calls.append(1) or compiled_logits(*args)
    compiled_ids, compiled_scores = greedy(model, ids)
    assert len(calls) == 5  # every token after the prompt's
    assert torch.equal(compiled_ids, eager_ids)
    torch.testing.assert_close(compiled_scores, eager_scores, atol=1e-5, rtol=0)

    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # tied to the embeddings: an in-place change, as an optimizer makes
    with pytest.raises(RuntimeError, match=r"compile_decoding\(\) again"):
        greedy(model, ids)


def test_compiled_decoding_without_frozen_weights_follows_weight_changes():
    model = tiny_model(routing="static").compile_decoding(freeze_weights=False)
    ids = torch.randint(0, 37, (1, 5), generator=torch.Generator().manual_seed(1))
    for scale in (1.0, 0.5):
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)
        compiled_ids, compiled_scores = greedy(model, ids)
        model._compiled_step, step = None, model._compiled_step  # the same weights, eagerly
        eager_ids, eager_scores = greedy(model, ids)
        model._compiled_step = step
        assert torch.equal(compiled_ids, eager_ids)
        torch.testing.assert_close(compiled_scores, eager_scores, atol=1e-5, rtol=0)
