"""The ``wda`` command run in-process: demo, inspect kernels, info, convert-release, errors; and viz checks."""

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from wavedensity import WDAForCausalLM, preset_config
from wavedensity.cli import main
from wavedensity.viz import kernel_data, plot_kernels

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RELEASE = SHARED / "testvectors" / "release-tri-content"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: extra intra-op threads only spin, and on a shared machine that costs ~50x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The main job, shortened: the tiny preset for 6 steps on the embedded corpus."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(out), "--config", "tiny", "--steps", "6"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def demo_dir(demo_run):
    return demo_run[0]


def release_dir():
    if not RELEASE.is_dir():
        pytest.skip(f"shared release test vector not found at {RELEASE} (expected beside the repository)")
    return RELEASE


def assert_png(path: Path):
    assert path.is_file() and path.stat().st_size > 1000, f"{path} missing or empty"
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def error_of(capsys, argv) -> str:
    """Run a command that must fail: exit code 2 and one ``wda: error:`` line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wda: error: "), err
    return err[0]


# ---- demo, inspect, info ---------------------------------------------------------------------------


def test_demo_trains_evaluates_samples_and_plots(demo_run):
    out, printed = demo_run
    assert_png(out / "kernels.png")
    assert_png(out / "curves.png")
    model = WDAForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert model.config.routing == "prefix" and model.config.vocab_size == len(tokenizer)
    assert "held-out plays: loss" in printed and "bits/byte" in printed
    assert "moves logits at 0..10 by 0.0e+00" in printed
    assert printed.count("--- sample") == 2


def test_inspect_kernels_on_demo_model(demo_dir, tmp_path):
    png = tmp_path / "sub" / "fig.png"
    argv = ["inspect", "kernels", "--model", str(demo_dir / "final"), "--out", str(png), "--layer", "1", "--head", "1"]
    assert main(argv + ["--prompt-ids", "12,35,3"]) == 0
    assert_png(png)
    png.unlink()
    assert main(argv) == 0  # default prompt
    assert_png(png)


def test_inspect_prompt_text_with_the_saved_tokenizer(demo_dir, tmp_path):
    png = tmp_path / "fig.png"
    assert main(["inspect", "kernels", "--model", str(demo_dir / "final"), "--out", str(png), "--prompt", "Hello"]) == 0
    assert_png(png)


def test_info(demo_dir, capsys):
    assert main(["info", "--model", str(demo_dir / "final")]) == 0
    out = capsys.readouterr().out
    assert "routing          prefix" in out and "gate             topk" in out
    assert "seq_len          64" in out
    model = WDAForCausalLM.from_pretrained(demo_dir / "final")
    assert f"parameters       {sum(p.numel() for p in model.parameters()):,}" in out
    assert "wave parameters  512 " in out  # 2 layers x 2 heads x 8 masks x 4 waves x (2 + 1 + 1)


def test_info_release(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pooled routing warns that it is not causal; expected here
        assert main(["info", "--model", str(release_dir()), "--release"]) == 0
    out = capsys.readouterr().out
    assert "routing          pooled" in out and "triangle waves" in out


# ---- convert-release ---------------------------------------------------------------------------------


def test_convert_release_round_trip(tmp_path):
    source, out = release_dir(), tmp_path / "converted"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["convert-release", "--release", str(source), "--out", str(out)]) == 0
        converted = WDAForCausalLM.from_pretrained(out).eval()
        original = WDAForCausalLM.from_release(source)
    assert (converted.config.routing, converted.config.gate) == ("pooled", "release")
    ids = torch.arange(original.config.seq_len).remainder(original.config.vocab_size)[None]
    with torch.no_grad():
        a = converted(ids, use_cache=False).logits
        b = original(ids, use_cache=False).logits
    assert (a - b).abs().max().item() <= 1e-6


def test_convert_release_refuses_to_overwrite_the_release(capsys):
    source = release_dir()
    assert "must differ" in error_of(capsys, ["convert-release", "--release", str(source), "--out", str(source)])


# ---- errors --------------------------------------------------------------------------------------------


def test_missing_model_dir(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    for argv in (["info", "--model", str(missing)],
                 ["inspect", "kernels", "--model", str(missing), "--out", str(tmp_path / "x.png")],
                 ["convert-release", "--release", str(missing), "--out", str(tmp_path / "out")]):
        assert str(missing) in error_of(capsys, argv)


def test_bad_model_files(tmp_path, demo_dir, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(demo_dir / "final", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_layers": 3}))  # weights for 2 layers only
    assert "missing keys (e.g. model.layers.2." in error_of(capsys, ["info", "--model", str(broken)])
    (broken / "config.json").write_text(json.dumps({**config, "embed_dim": 32}))
    assert "in the file" in error_of(capsys, ["info", "--model", str(broken)])
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    assert str(broken) in error_of(capsys, ["info", "--model", str(broken)])
    (broken / "config.json").write_text("{")
    assert str(broken) in error_of(capsys, ["info", "--model", str(broken)])


def test_release_dir_without_flag_is_refused(capsys):
    # from_pretrained would load it with every weight missing (random): the CLI must refuse.
    assert "--release" in error_of(capsys, ["info", "--model", str(release_dir())])


def test_inspect_errors(demo_dir, tmp_path, capsys):
    bare = tmp_path / "bare"  # the model without its tokenizer
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(demo_dir / "final" / name, bare / name)
    no_tokenizer = ["inspect", "kernels", "--model", str(bare), "--out", str(tmp_path / "x.png")]
    assert "--prompt-ids" in error_of(capsys, no_tokenizer + ["--prompt", "hi"])
    base = ["inspect", "kernels", "--model", str(demo_dir / "final"), "--out", str(tmp_path / "x.png")]
    vocab = json.loads((demo_dir / "final" / "config.json").read_text())["vocab_size"]
    assert "layer 5 is out of range" in error_of(capsys, base + ["--layer", "5"])
    assert "head 2 is out of range" in error_of(capsys, base + ["--head", "2"])
    assert "more than the model's seq_len=64" in error_of(capsys, base + ["--prompt-ids", ",".join(["1"] * 65)])
    assert f"must lie in [0, {vocab})" in error_of(capsys, base + ["--prompt-ids", f"1,{vocab}"])
    assert "comma-separated" in error_of(capsys, base + ["--prompt-ids", "a,b"])
    assert not (tmp_path / "x.png").exists()


# ---- viz ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return WDAForCausalLM(preset_config("cpu-tiny")).eval()


@pytest.mark.parametrize("ids, layer, head, message", [
    ([], 0, 0, "empty"),
    ([1] * 65, 0, 0, "seq_len=64"),
    ([1, 2], 2, 0, "layer 2"),
    ([1, 2], -1, 0, "layer -1"),
    ([1, 2], 0, 2, "head 2"),
])  # fmt: skip
def test_plot_kernels_rejects(tiny, tmp_path, ids, layer, head, message):
    with pytest.raises(ValueError, match=message):
        plot_kernels(tiny, ids, layer, head, tmp_path / "x.png")


def test_plot_kernels_rejects_softmax(tmp_path):
    model = WDAForCausalLM(preset_config("cpu-tiny", mixer="softmax"))
    with pytest.raises(ValueError, match="softmax"):
        plot_kernels(model, [1, 2, 3], 0, 0, tmp_path / "x.png")


@pytest.mark.parametrize("routing", ["prefix", "static"])
def test_plotted_density_is_the_applied_one(routing):
    """The density drawn for the last position is the one the layer applies there."""
    torch.manual_seed(0)
    model = WDAForCausalLM(preset_config("cpu-tiny", routing=routing)).eval()
    ids = torch.randint(256, (1, 30))
    layer, head, last = 1, 1, 29
    data = kernel_data(model, ids, layer, head)
    mixer = model.model.layers[layer].mixer
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True, use_cache=False).hidden_states[layer]
        weights = mixer.routing_weights(hidden)
        identity = torch.eye(30).expand(1, mixer.num_heads, 30, 30).contiguous()
        applied = mixer.apply_kernels(weights, identity, 0)[0, head, last].flip(0)  # o[t, j] = Dn_t(t - j)
    torch.testing.assert_close(applied, data["density"][:30], atol=1e-6, rtol=0)
    assert model.training is False and data["weights"].shape == ((30, 8) if routing == "prefix" else (1, 8))
