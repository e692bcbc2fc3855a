"""Release compatibility: shared test vectors, a random release directory against the float64
re-statement in release_reference.py, strict keys, and clear errors for broken files."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from release_reference import per_prefix_logits, release_reference_logits
from wavedensity import WaveCharLM, WDAForCausalLM

VECTOR_CASES = ["release-tri-content", "release-sin-plain"]


def release_logits(model, ids):
    with torch.no_grad():
        return model(ids[None], use_cache=False).logits[0].double()


@pytest.mark.parametrize("case", VECTOR_CASES)
def test_shared_vectors_all_semantics(shared_dir, case):
    folder = shared_dir / "testvectors" / case
    expected = load_file(folder / "expected.safetensors")
    ids = expected["input_ids"]
    pooled = WDAForCausalLM.from_release(folder)
    assert (pooled.config.routing, pooled.config.gate) == ("pooled", "release")
    torch.testing.assert_close(release_logits(pooled, ids), expected["logits_pooled"], atol=1e-4, rtol=0)
    prefix = WDAForCausalLM.from_release(folder, routing="prefix")
    torch.testing.assert_close(release_logits(prefix, ids), expected["logits_prefix"], atol=1e-4, rtol=0)
    # The honest number of a pooled model: feed tokens one at a time through the cache.
    with torch.no_grad():
        out, rows = None, []
        for t in range(len(ids)):
            out = pooled(ids[None, t : t + 1], cache=out.cache if out else None, use_cache=True)
            rows.append(out.logits[0, -1])
    torch.testing.assert_close(torch.stack(rows).double(), expected["logits_per_prefix"], atol=1e-4, rtol=0)


def random_release_dir(path, seed=0, **config_overrides):
    """A release-format directory written from the key list in docs/architecture.md §2.3, not from our converter."""
    config = dict(vocab_size=41, seq_len=20, embed_dim=24, num_layers=2, num_heads=3, num_masks=5,
                  num_waves_per_mask=3, topk_masks=2, attn_alpha=2.5, content_rank=3, content_mix=0.25,
                  learned_content=True, use_sin_waves=False, ffn_mult=2, tie_embeddings=False)
    config.update(config_overrides)
    g = torch.Generator().manual_seed(seed)
    V, L, D = config["vocab_size"], config["seq_len"], config["embed_dim"]
    H, M, W, R, G = config["num_heads"], config["num_masks"], config["num_waves_per_mask"], config["content_rank"], 128
    rand = lambda *shape, std=0.3: torch.randn(*shape, generator=g) * std  # noqa: E731
    sd = {"tok_emb.weight": rand(V, D), "pos_emb": rand(1, L, D), "ln.weight": 1 + rand(D, std=0.1),
          "ln.bias": rand(D, std=0.1), "head.weight": rand(V, D)}
    r = torch.arange(-(L - 1), L, dtype=torch.float32)
    pos_kern = torch.stack([r / L, torch.sign(r) * torch.sqrt(r.abs() + 1e-6) / math.sqrt(L)], -1)
    window = torch.exp(-torch.arange(L, dtype=torch.float32) ** 2 / (2 * (L / 4) ** 2))
    for i in range(config["num_layers"]):
        b = f"blocks.{i}."
        for name, shape in [("v_proj", (D, D)), ("out_proj", (D, D)), ("q_mod", (H, D)), ("k_mod", (H, D)),
                            ("ffn.0", (config["ffn_mult"] * D, D)), ("ffn.2", (D, config["ffn_mult"] * D))]:
            sd[b + name + ".weight"] = rand(*shape, std=1 / math.sqrt(shape[1]))
            sd[b + name + ".bias"] = rand(shape[0], std=0.1)
        for name in ("ln_attn", "ln_ffn"):
            sd[b + name + ".weight"], sd[b + name + ".bias"] = 1 + rand(D, std=0.1), rand(D, std=0.1)
        if config["learned_content"]:
            sd[b + "content_q_proj.weight"], sd[b + "content_k_proj.weight"] = rand(H * R, D), rand(H * R, D)
        for h in range(H):
            for mlp, out in (("gatings", M), ("mod_mlp", 8)):
                sd[f"{b}{mlp}.{h}.0.weight"], sd[f"{b}{mlp}.{h}.0.bias"] = rand(G, D), rand(G, std=0.1)
                sd[f"{b}{mlp}.{h}.2.weight"], sd[f"{b}{mlp}.{h}.2.bias"] = rand(out, G, std=0.2), rand(out, std=0.1)
            sd[f"{b}mod_basis.{h}"] = rand(8, M, std=0.5)
            sd[f"{b}freqs.{h}"], sd[f"{b}amps.{h}"] = rand(M, W, 2, std=1.5), 0.5 + rand(M, W, std=0.2)
            sd[f"{b}phases.{h}"] = rand(M, W, std=math.pi)
        sd[b + "pos_kern"], sd[b + "window_kern_pos"] = pos_kern.clone(), window.clone()
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in sd.items()}, path / "model.safetensors")
    return config, sd


@pytest.mark.parametrize("variant", [dict(), dict(learned_content=False), dict(use_sin_waves=True, content_mix=0.0)])
def test_random_release_directory_matches_the_plain_restatement(tmp_path, variant):
    config, sd = random_release_dir(tmp_path, **variant)
    ids = torch.randint(0, config["vocab_size"], (config["seq_len"],), generator=torch.Generator().manual_seed(1))
    sd64 = {k: v.double() for k, v in sd.items()}
    for routing in ("pooled", "prefix"):
        want = release_reference_logits(sd64, config, ids, routing)
        model = WDAForCausalLM.from_release(tmp_path, routing=routing)
        torch.testing.assert_close(release_logits(model, ids), want, atol=1e-4, rtol=0)
        # float64: only the float32 encoding buffers (~3e-8 apart from the float64 closed form) differ
        torch.testing.assert_close(release_logits(model.double(), ids), want, atol=1e-6, rtol=0)
    per_prefix = per_prefix_logits(sd64, config, ids[:8])
    model = WDAForCausalLM.from_release(tmp_path).double()
    with torch.no_grad():
        got = torch.stack([model(ids[None, : t + 1], use_cache=False).logits[0, -1] for t in range(8)])
    torch.testing.assert_close(got, per_prefix, atol=1e-6, rtol=0)


def test_wavecharlm_speaks_release_keys_and_converts(tmp_path):
    config, sd = random_release_dir(tmp_path)
    model = WaveCharLM(**config)
    model.load_state_dict(sd)
    assert set(model.state_dict()) == set(sd)
    assert all(torch.equal(model.state_dict()[k], sd[k]) for k in sd)
    ids = torch.randint(0, config["vocab_size"], (2, 11))
    converted = WDAForCausalLM.from_release(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), converted(ids, use_cache=False).logits)
    converted.save_pretrained(tmp_path / "ours")
    reloaded = WDAForCausalLM.from_pretrained(tmp_path / "ours")
    assert (reloaded.config.routing, reloaded.config.gate) == ("pooled", "release")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, use_cache=False).logits, converted(ids, use_cache=False).logits,
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda sd: sd.pop("blocks.1.gatings.2.0.bias"), r"missing \['blocks.1.gatings.2.0.bias'\]"),
        (lambda sd: sd.update(extra=torch.zeros(1)), r"unexpected \['extra'\]"),
        (lambda sd: sd.update({"blocks.0.freqs.1": torch.zeros(5, 3, 3)}), "blocks.0.freqs.1: shape"),
        (lambda sd: sd.update({"blocks.0.pos_kern": torch.zeros(39, 2)}), "blocks.0.pos_kern"),
    ],
)
def test_release_keys_load_strictly(tmp_path, corrupt, message):
    config, sd = random_release_dir(tmp_path)
    corrupt(sd)
    with pytest.raises((KeyError, ValueError), match=message):
        WaveCharLM(**config).load_state_dict(sd)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises((KeyError, ValueError), match=message):
        WDAForCausalLM.from_release(tmp_path)
    with pytest.raises(ValueError, match="strictly"):
        WaveCharLM(**config).load_state_dict(sd, strict=False)


def test_broken_release_files_give_errors_that_name_them(tmp_path):
    random_release_dir(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        WDAForCausalLM.from_release(tmp_path)
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="model.safetensors"):
        WDAForCausalLM.from_release(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "num_experts": 4}))
    with pytest.raises(ValueError, match=r"unknown WaveCharLM arguments \['num_experts'\]"):
        WDAForCausalLM.from_release(tmp_path)
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid UTF-8 JSON"):
        WDAForCausalLM.from_release(tmp_path)
    config_path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="config.json"):
        WDAForCausalLM.from_release(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        WDAForCausalLM.from_release(tmp_path / "nowhere")


def test_from_pretrained_refuses_a_release_directory_instead_of_loading_random_weights(tmp_path):
    random_release_dir(tmp_path)
    with pytest.raises(ValueError, match="from_release"):
        WDAForCausalLM.from_pretrained(tmp_path)
