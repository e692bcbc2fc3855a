"""Adapter sources the command line takes (run directory, adapter file, step copy, latest checkpoint,
the release's ``adapter_step*.pt`` payloads), the atomic adapter pair, and ``--model RUN_DIR``."""

import json

import pytest
import torch
from conftest import TEACHER_VOCAB, tiny_transplant

from wavedensity.models.release import to_release_state_dict
from wavedensity.train.checkpoint import run_model_directory
from wavedensity.transplant import TransplantError, set_mixing
from wavedensity.transplant import adapter as adapters
from wavedensity.transplant.adapter import adapter_directory, load_adapter, read_adapter, save_adapter
from wavedensity.transplant.release_adapter import wrapper_paths
from wavedensity.transplant.wrapper import wda_parameters


def trained(seed=3, layers=None):
    """A tiny transplant whose adapter tensors are all random (so a copy that misses one shows)."""
    model = tiny_transplant("llama", layers)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in wda_parameters(model).values():
            param.normal_(0.0, 0.3)
    return model


def logits(model):
    set_mixing(model, alpha=1.0, teacher_scale=0.0)
    ids = torch.randint(TEACHER_VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def same_adapter(a, b) -> bool:
    ta, tb = wda_parameters(a), wda_parameters(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# ---- the atomic pair ------------------------------------------------------------------------------


def test_save_replaces_the_pair_and_a_failure_mid_save_keeps_the_old_one(tmp_path, monkeypatch):
    first, second = trained(1), trained(2)
    save_adapter(first, tmp_path, step=1)
    save_adapter(first, tmp_path, step=2)
    assert read_adapter(tmp_path)[0]["step"] == 2
    assert len(list(tmp_path.glob(adapters.PAIR_PREFIX + "*"))) == 1  # the previous pair is gone

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # the weights of the new pair are written, then writing its JSON fails
    monkeypatch.setattr(adapters, "adapter_metadata", crash)
    with pytest.raises(OSError, match="simulated"):
        save_adapter(second, tmp_path, step=3)
    monkeypatch.undo()
    # the new pair is complete, but the process dies just before the switch
    monkeypatch.setattr(adapters.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_adapter(second, tmp_path, step=4)
    monkeypatch.undo()
    meta, tensors = read_adapter(tmp_path)
    assert meta["step"] == 2
    assert all(torch.equal(tensors[k], v) for k, v in wda_parameters(first).items())
    save_adapter(second, tmp_path, step=5)  # and the next save works, leaving one pair
    assert read_adapter(tmp_path)[0]["step"] == 5
    assert len(list(tmp_path.glob(adapters.PAIR_PREFIX + "*"))) == 1


def test_an_older_layout_of_plain_files_is_replaced(tmp_path):
    model = trained()
    from safetensors.torch import save_file

    save_file({k: v.detach() for k, v in wda_parameters(model).items()}, tmp_path / "adapter.safetensors")
    (tmp_path / "adapter.json").write_text(json.dumps(adapters.adapter_metadata(model, 7)))
    assert read_adapter(tmp_path)[0]["step"] == 7
    save_adapter(model, tmp_path, step=8)
    assert (tmp_path / "adapter.json").is_symlink() and read_adapter(tmp_path)[0]["step"] == 8


# ---- where an adapter comes from ----------------------------------------------------------------------


def test_adapter_sources(tmp_path, capsys):
    model = trained()
    save_adapter(model, tmp_path / "run", step=4)
    save_adapter(model, tmp_path / "run" / "adapters" / "step-000004", step=4)
    assert adapter_directory(tmp_path / "run") == tmp_path / "run"
    assert adapter_directory(tmp_path / "run" / "adapter.safetensors") == tmp_path / "run"
    copy = tmp_path / "run" / "adapters" / "step-000004"
    assert adapter_directory(copy / "adapter.safetensors") == copy
    fresh = tiny_transplant("llama")
    load_adapter(fresh, copy / "adapter.safetensors")
    assert same_adapter(fresh, model)
    # a run that has only checkpoints so far: the latest one, said on stderr
    checkpoints = tmp_path / "early" / "checkpoints"
    save_adapter(model, checkpoints / "step-000002", step=2)
    (checkpoints / "step-000002" / "trainer_state.json").write_text("{}")
    (checkpoints / "latest.json").write_text(json.dumps({"step": 2, "path": "step-000002"}))
    assert adapter_directory(tmp_path / "early") == checkpoints / "step-000002"
    assert "latest checkpoint" in capsys.readouterr().err
    with pytest.raises(TransplantError, match="not an adapter file"):
        adapter_directory(_write(tmp_path / "notes.txt"))
    with pytest.raises(TransplantError, match="no such directory or file"):
        adapter_directory(tmp_path / "absent")
    with pytest.raises(TransplantError, match="pass the transplant config"):
        read_adapter(tmp_path / "adapter_step100.pt")


def _write(path):
    path.write_text("x")
    return path


# ---- the release's adapter_step*.pt payloads --------------------------------------------------------


def release_payload(model) -> dict:
    """The release's naming: PATH.gamma, PATH.gain and PATH.wda.<released block key>, per wrapped module."""
    adapter = {}
    for path, wrapper in wrapper_paths(model):
        adapter[f"{path}.gamma"] = wrapper.gamma.detach().clone()
        adapter[f"{path}.gain"] = wrapper.gain.detach().clone()
        block = {f"model.layers.0.{k}": v.detach().clone() for k, v in wrapper.wda.state_dict().items()}
        for key, tensor in to_release_state_dict(block, wrapper.wda_config).items():
            if key.startswith("blocks.0."):  # the block's keys (the stored buffers included)
                adapter[f"{path}.wda.{key[len('blocks.0.'):]}"] = tensor
    return {"step": 120, "adapter": adapter, "payload": {"note": "written by the release's trainer"}}


def test_a_release_payload_loads_into_the_same_model(tmp_path):
    model = trained(layers=[0, 1])
    payload = release_payload(model)
    names = payload["adapter"]
    # spot-check the release's layout: per-head tensors and the two stored buffers
    assert torch.equal(names["model.layers.1.self_attn.wda.freqs.2"], model.base.model.layers[1].self_attn.wda.mixer.freqs[2])
    assert "model.layers.0.self_attn.wda.gatings.3.0.weight" in names and "model.layers.0.self_attn.wda.pos_kern" in names
    torch.save(payload, tmp_path / "adapter_step120.pt")
    fresh = tiny_transplant("llama", [0, 1])
    assert not same_adapter(fresh, model)
    meta = load_adapter(fresh, tmp_path / "adapter_step120.pt")
    assert meta["step"] == 120 and same_adapter(fresh, model)
    assert torch.equal(logits(fresh), logits(model))
    # without the buffers too (an adapter of trained tensors only)
    bare = {k: v for k, v in names.items() if not k.endswith(("pos_kern", "window_kern_pos"))}
    torch.save({"step": 1, "adapter": bare, "payload": None}, tmp_path / "adapter_step1.pt")
    load_adapter(tiny_transplant("llama", [0, 1]), tmp_path / "adapter_step1.pt")


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("model.layers.1.self_attn.wda.amps.3"), r"missing \['model.layers.1.self_attn.wda.amps.3'\]"),
    (lambda a: a.update({"model.layers.1.self_attn.wda.extra": torch.zeros(2)}),
     r"without a counterpart in the model \['model.layers.1.self_attn.wda.extra'\]"),
    (lambda a: a.update({"model.layers.0.self_attn.wda.phases.0": torch.zeros(3, 3)}),
     r"tensor model.layers.0.self_attn.wda.phases.0 has shape \[3, 3\]"),
    (lambda a: a.update({"model.layers.0.self_attn.wda.pos_kern": torch.zeros_like(a["model.layers.0.self_attn.wda.pos_kern"])}),
     r"model.layers.0.self_attn.wda.pos_kern does not hold the release's encoding"),
])
def test_a_mismatched_release_payload_is_refused_by_name(tmp_path, change, message):
    payload = release_payload(trained(layers=[0, 1]))
    change(payload["adapter"])
    torch.save(payload, tmp_path / "adapter_step5.pt")
    with pytest.raises(TransplantError, match=message):
        load_adapter(tiny_transplant("llama", [0, 1]), tmp_path / "adapter_step5.pt")


class NotWeights:
    pass


def test_a_payload_that_needs_unpickling_is_refused(tmp_path):
    torch.save({"step": 1, "adapter": {}, "payload": NotWeights()}, tmp_path / "adapter_step1.pt")
    with pytest.raises(TransplantError, match="cannot read with weights_only=True"):
        load_adapter(tiny_transplant("llama"), tmp_path / "adapter_step1.pt")
    torch.save([1, 2], tmp_path / "adapter_step2.pt")
    with pytest.raises(TransplantError, match="expected a dict with an 'adapter' dict"):
        load_adapter(tiny_transplant("llama"), tmp_path / "adapter_step2.pt")


# ---- --model RUN_DIR ----------------------------------------------------------------------------------


def test_model_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-000010"
    step.mkdir(parents=True)
    (step / "config.json").write_text("{}")
    (step / "trainer_state.json").write_text("{}")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 10, "path": "step-000010"}))
    assert run_model_directory(str(run)) == str(step)
    assert f"using {step}" in capsys.readouterr().err
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    assert run_model_directory(str(run)) == str(run / "final")
    assert f"using {run / 'final'}" in capsys.readouterr().err
    assert run_model_directory(str(run / "final")) == str(run / "final")  # a model directory is itself
    assert run_model_directory(str(tmp_path / "absent")) == str(tmp_path / "absent")  # loading reports it


# ---- evaluation on real text ------------------------------------------------------------------------


def test_text_windows_cover_every_token_once_and_cap(tmp_path):
    from wavedensity.data import train_char_tokenizer
    from wavedensity.transplant.cli import side_by_side
    from wavedensity.transplant.evaluation import text_windows

    rows = [{"text": "the first document, a little longer than one window"}, {"text": "a second one"}]
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    tokenizer = train_char_tokenizer([r["text"] for r in rows])
    windows = text_windows(str(source), tokenizer, window=8)
    assert all(len(ids) <= 8 for ids, _, _ in windows) and len(windows) > 3
    predicted = sum(int((labels != -100).sum()) for _, labels, _ in windows)
    capped = text_windows(str(source), tokenizer, window=8, max_tokens=10)
    assert len(capped) == 2 and sum(int((labels != -100).sum()) for _, labels, _ in capped) <= predicted
    with pytest.raises(ValueError, match="--max-tokens must be >= 1"):
        text_windows(str(source), tokenizer, window=8, max_tokens=0)
    lines = side_by_side("a b c d e f", "x\ny", width=5)
    assert lines == ["  a b c | x\u21b5 y", "  d e f | "]
