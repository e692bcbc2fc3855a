"""The LoLCATs-style transplant branch: rotary embedding on the content path, the teacher's own q/k/v/o
with its RoPE, the output gate opened, and ``wda_options`` passing branch settings through."""

import pytest
import torch
from conftest import TEACHER_VOCAB, tiny_model, tiny_transplant
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half  # noqa: F401

from wavedensity.ops import rotary_embedding, rotary_embedding_reference
from wavedensity.train import ConfigError
from wavedensity.transplant import TransplantError
from wavedensity.transplant.config import TransplantConfig
from wavedensity.transplant.transfer import capture_attention, init_branches_from_teacher
from wavedensity.transplant.wrapper import trainable_parameters, wrappers_of

THETA = 10000.0  # the tiny Llama teacher's RoPE base (LlamaConfig's default)
EXACT = dict(branch_output="mixer", content_rank=6, content_mix=1.0, content_feature_map="hedgehog",
             content_rope_theta=THETA)


def assert_branches_are_the_teachers_attention(model, ids, rtol, atol):
    """Every wrapped layer's branch, on that layer's captured attention input, gives the teacher's output."""
    for wrapper in wrappers_of(model):
        x, teacher_out = capture_attention(model, ids)[wrapper.layer]
        with torch.no_grad():
            torch.testing.assert_close(wrapper.branch(x, None), teacher_out, rtol=rtol, atol=atol)


@pytest.mark.parametrize("s", [1, 2, 63, 64, 257])
def test_rotary_embedding_matches_reference_with_gradients(s):
    x = torch.randn(2, 3, s, 8, dtype=torch.float64, requires_grad=True)
    fast, reference = rotary_embedding(x, 500.0, offset=3), rotary_embedding_reference(x, 500.0, offset=3)
    torch.testing.assert_close(fast, reference)
    grad = torch.randn_like(fast)
    torch.testing.assert_close(torch.autograd.grad(fast, x, grad)[0], torch.autograd.grad(reference, x, grad)[0])


def test_rotary_embedding_is_the_llama_teachers():
    teacher = tiny_transplant("llama").base
    x = torch.randn(2, 4, 9, 6)
    positions = torch.arange(2, 11)[None]
    cos, sin = teacher.model.rotary_emb(x, positions)
    expected, _ = apply_rotary_pos_emb(x, x, cos, sin)
    torch.testing.assert_close(rotary_embedding(x, THETA, offset=2), expected)


@pytest.mark.parametrize("s", [1, 2, 7, 16])
def test_teacher_init_with_open_gate_and_full_window_is_the_teachers_attention(s):
    """vo + qk + gate, content_mix 1, a window of at least S: the branch computes the teacher's
    attention (its queries, keys with RoPE, values, softmax and output projection), to the window
    normaliser's 1e-6 guard (relative)."""
    model = tiny_transplant("llama", **EXACT, sliding_window=16).double()
    init_branches_from_teacher(model, ["vo", "qk", "gate"])
    ids = torch.randint(TEACHER_VOCAB, (2, s), generator=torch.Generator().manual_seed(s))
    assert_branches_are_the_teachers_attention(model, ids, rtol=2e-6, atol=1e-12)


def test_a_shorter_window_departs_from_the_teacher_only_after_the_window():
    model = tiny_transplant("llama", **EXACT, sliding_window=4).double()
    init_branches_from_teacher(model, ["vo", "qk", "gate"])
    ids = torch.randint(TEACHER_VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    wrapper = wrappers_of(model)[0]
    x, teacher_out = capture_attention(model, ids)[0]
    with torch.no_grad():
        out = wrapper.branch(x, None)
    torch.testing.assert_close(out[:, :4], teacher_out[:, :4], rtol=2e-6, atol=1e-12)
    assert (out[:, 4:] - teacher_out[:, 4:]).abs().max() > 1e-4  # the hedgehog terms of older tokens


def test_qk_refuses_a_branch_without_the_teachers_rope():
    model = tiny_transplant("llama", **{**EXACT, "content_rope_theta": 0.0})
    with pytest.raises(TransplantError, match="RoPE base 10000.0.*content_rope_theta"):
        init_branches_from_teacher(model, ["qk"])


def test_light_gate_and_scale_mlps_shrink_the_branch():
    heavy = sum(p.numel() for p in trainable_parameters(tiny_transplant("llama", gate_hidden=64)).values())
    light = sum(p.numel() for p in trainable_parameters(tiny_transplant("llama", gate_hidden=2, scale_rank=2)).values())
    # per layer (width 24, H 4 heads, M 4 masks): the MLPs' first layers (24 + 1) x 2 H G, the gate output
    # H M G, the scale output H R G + H R, the modulation basis H R M; G 64 -> 2, R 8 -> 2
    per_layer = 25 * 2 * 4 * (64 - 2) + 4 * 4 * (64 - 2) + (4 * 8 * 64 - 4 * 2 * 2) + 4 * (8 - 2) + 4 * (8 - 2) * 4
    assert heavy - light == 2 * per_layer


ROPE_OPTIONS = dict(content_rope_theta=100.0, sliding_window=5, content_feature_map="hedgehog", content_mix=0.5)


def rope_model():
    model = tiny_model(**ROPE_OPTIONS)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".content." in name:
                param.add_(torch.randn_like(param) * 0.3)
    return model


def test_rope_content_path_is_causal():
    model, torch_gen = rope_model(), torch.Generator().manual_seed(0)
    ids = torch.randint(0, 37, (2, 40), generator=torch_gen)
    with torch.no_grad():
        base = model(ids, use_cache=False).logits
        for prefix in (1, 3, 7, 15, 31, 32):
            changed = ids.clone()
            changed[:, prefix:] = torch.randint(0, 37, changed[:, prefix:].shape, generator=torch_gen)
            torch.testing.assert_close(model(changed, use_cache=False).logits[:, :prefix], base[:, :prefix])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits
    grad = torch.autograd.grad(logits[:, 9].sum(), embeds)[0]
    assert torch.count_nonzero(grad[:, 10:]) == 0 and torch.count_nonzero(grad[:, :10]) > 0


def test_rope_content_path_cached_decoding_equals_recomputation():
    model = rope_model()
    ids = torch.randint(0, 37, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :9], use_cache=True)
        steps = [out.logits]
        for start in range(9, 30, 4):
            out = model(ids[:, start:start + 4], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_wda_options_reach_the_branch_and_bad_ones_are_refused(tmp_path):
    base = dict(teacher_model_id="t", dataset_path="d.txt", seq_len=32)
    config = TransplantConfig.from_dict({**base, "wda_options": {"sliding_window": 8, "gate_hidden": 4}})
    assert config.wda_settings()["sliding_window"] == 8 and config.wda_settings()["gate_hidden"] == 4
    with pytest.raises(ConfigError, match=r"wda_options \['num_masks'\] have their own wda_\* keys"):
        TransplantConfig.from_dict({**base, "wda_options": {"num_masks": 4}})
    with pytest.raises(ConfigError, match="wda_options must be an object"):
        TransplantConfig.from_dict({**base, "wda_options": [1]})


def narrow_head_llama(head_dim: int):
    """The tiny Llama teacher with heads narrower or wider than width / heads (24 / 4 = 6)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=TEACHER_VOCAB, hidden_size=24, intermediate_size=48,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                                        max_position_embeddings=64, num_hidden_layers=2)).eval()


def test_vo_from_narrower_teacher_heads_is_still_the_teachers_attention():
    """Teacher head_dim 4 < the branch's 6: each head's o_h v_h has rank 4, so its SVD factors are exact."""
    model = tiny_transplant("llama", teacher=narrow_head_llama(4), **{**EXACT, "content_rank": 4},
                            sliding_window=16).double()
    init_branches_from_teacher(model, ["vo", "qk", "gate"])
    ids = torch.randint(TEACHER_VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    # atol: the SVD's float64 rounding on outputs of size ~0.1
    assert_branches_are_the_teachers_attention(model, ids, rtol=2e-6, atol=1e-10)


def test_vo_from_wider_teacher_heads_is_the_best_rank_head_dim_map():
    """Teacher head_dim 12 > the branch's 6: per head, out_h @ values_h is the truncated SVD of o_h v_h
    (Eckart-Young: its error is the norm of the dropped singular values)."""
    teacher = narrow_head_llama(12)
    model = tiny_transplant("llama", teacher=teacher, **{**EXACT, "content_rank": 12}).double()
    init_branches_from_teacher(model, ["vo"])
    attention = teacher.model.layers[0].self_attn
    mixer = wrappers_of(model)[0].wda.mixer
    v = attention.v_proj.weight.double().unflatten(0, (2, 12)).repeat_interleave(2, dim=0)  # GQA: 2 -> 4 heads
    for h in range(4):
        product = attention.o_proj.weight.double()[:, h * 12 : (h + 1) * 12] @ v[h]
        branch = mixer.out_proj.weight[:, h * 6 : (h + 1) * 6] @ mixer.in_proj.weight[h * 6 : (h + 1) * 6]
        dropped = torch.linalg.svdvals(product)[6:]
        torch.testing.assert_close(torch.linalg.matrix_norm(product - branch), dropped.norm())


def normed_gemma(head_dim: int = 12):
    """A tiny Gemma-3 whose heads are width / heads wide (24 / 2), a sliding window no shorter than the
    test sequences, its two RoPE bases, query_pre_attn_scalar 256 (softmax scale 1/16, not 1/sqrt(12))
    and q/k norm gains away from 1."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    teacher = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=TEACHER_VOCAB, hidden_size=24, intermediate_size=48, num_attention_heads=2, num_key_value_heads=1,
        head_dim=head_dim, num_hidden_layers=2, max_position_embeddings=64, sliding_window=32,
        layer_types=["sliding_attention", "full_attention"])).eval()
    with torch.no_grad():
        for name, param in teacher.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.normal_(0.0, 0.5)
    return teacher


GEMMA_EXACT = dict(branch_output="mixer", content_rank=12, content_mix=1.0, content_feature_map="hedgehog",
                   content_rope_theta="teacher", content_qk_norm=True, sliding_window=32)


@pytest.mark.parametrize("s", [1, 2, 7, 16])
def test_teacher_init_copies_gemmas_qk_norms_rope_bases_and_scale(s):
    """Gemma-3: per-head q/k RMS norms (gain 1 + w), RoPE base 10,000 in sliding layers and 1,000,000 in
    global ones ("teacher" resolves each), softmax scale query_pre_attn_scalar ** -0.5: with vo + qk + gate
    the branch is the teacher's attention (the teacher's norms run in float32, hence the tolerance)."""
    model = tiny_transplant("gemma3", teacher=normed_gemma(), **GEMMA_EXACT).double()
    thetas = [wrapper.wda.mixer.content.rope_theta for wrapper in wrappers_of(model)]
    assert thetas == [10000.0, 1000000.0]
    init_branches_from_teacher(model, ["vo", "qk", "gate"])
    ids = torch.randint(TEACHER_VOCAB, (2, s), generator=torch.Generator().manual_seed(s))
    assert_branches_are_the_teachers_attention(model, ids, rtol=1e-5, atol=1e-7)


def test_gemma_qk_needs_the_content_paths_norms():
    model = tiny_transplant("gemma3", teacher=normed_gemma(), **{**GEMMA_EXACT, "content_qk_norm": False})
    with pytest.raises(TransplantError, match="content_qk_norm true"):
        init_branches_from_teacher(model, ["qk"])


def test_qk_refuses_a_teacher_that_normalises_only_its_queries():
    model = tiny_transplant("gemma3", teacher=normed_gemma(), **GEMMA_EXACT)
    wrappers_of(model)[0].teacher.k_norm = None
    with pytest.raises(TransplantError, match="normalises only its queries"):
        init_branches_from_teacher(model, ["qk"])
