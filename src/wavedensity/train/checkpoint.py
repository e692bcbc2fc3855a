"""Training checkpoints that survive faults: safetensors + JSON, written atomically.

Layout of a run directory::

    OUT/checkpoints/step-000100/   model (save_pretrained), tokenizer, optimizer.safetensors, trainer_state.json
    OUT/checkpoints/latest.json    {"step": 100, "path": "step-000100"}  (replaced atomically)

A checkpoint is first written to ``step-N.tmp`` and renamed when complete; ``latest.json`` is
replaced (``os.replace``) only after that, and older checkpoints are deleted only after the new
``latest.json`` is in place. A crash at any instant leaves ``latest.json`` naming a complete
checkpoint (or no ``latest.json`` at all before the first save).
"""

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read back; the message names the file."""


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an ``optimizer.state_dict()`` into tensors (for safetensors) and a JSON-able remainder."""
    tensors, plain_state = {}, {}
    for index, entries in state["state"].items():
        plain_state[str(index)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain_state[str(index)][key] = value
    return tensors, {"state": plain_state, "param_groups": state["param_groups"]}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The ``optimizer.state_dict()`` that ``optimizer_tensors`` split."""
    state = {}
    for index, plain in meta["state"].items():
        state[int(index)] = dict(plain)
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():  # a run resumed on a machine with fewer GPUs restores those it has
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, tokenizer, state: dict, keep: int = 2, *,
                    model_state: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep`` complete checkpoints.

    ``model_state`` / ``optimizer_state``: whole state dicts gathered from a sharded run (see
    distributed.py), saved instead of what ``model`` and ``optimizer`` hold locally.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final, tmp = root / name, root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if model_state is None:
        model.save_pretrained(tmp)  # a model, or a stand-in that writes only part of one (an adapter)
    else:
        model.save_pretrained(tmp, state_dict=model_state)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    tensors, optimizer_meta = optimizer_tensors(optimizer.state_dict() if optimizer_state is None else optimizer_state)
    save_file({**tensors, **rng_tensors()}, tmp / "optimizer.safetensors")
    with open(tmp / "trainer_state.json", "w", encoding="utf-8") as f:
        json.dump({"step": step, "optimizer": optimizer_meta, **state}, f, indent=1)
    for path in tmp.iterdir():
        if path.is_file():  # an adapter's pair sits in a folder of its own, synced when written
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    if final.exists():  # a checkpoint of the same step from an earlier, interrupted attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    _write_json_atomic(root / LATEST, {"step": step, "path": name})
    complete = sorted((p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")),
                      key=lambda p: int(p.name.removeprefix("step-")))
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest.json`` names, or None when the run has none yet."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    try:
        path = pointer.parent / json.loads(pointer.read_text(encoding="utf-8"))["path"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{pointer}: unreadable ({err})") from None
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"{pointer} names {path}, which is incomplete")
    return path


def load_training_state(checkpoint: Path, optimizer, load_optimizer=None) -> dict:
    """Restore optimizer and RNG states from ``checkpoint``; return its trainer_state.json.

    ``load_optimizer(state_dict)`` replaces ``optimizer.load_state_dict`` (sharded runs load the whole
    state through distributed.load_optimizer_state).
    """
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        tensors = load_file(checkpoint / "optimizer.safetensors")
    except Exception as err:  # corrupt JSON or safetensors: name the checkpoint
        raise CheckpointError(f"{checkpoint}: cannot read the training state ({err})") from None
    saved = optimizer_state({k: v for k, v in tensors.items() if k.startswith("state.")}, state["optimizer"])
    (load_optimizer or optimizer.load_state_dict)(saved)
    restore_rng(tensors)
    return state


def run_model_directory(path: str) -> str:
    """``--model``: a model directory as it is; a ``wda train`` run directory (no config.json of its
    own) gives its ``final/``, else its latest checkpoint, saying which on stderr."""
    import sys

    run = Path(path)
    if not run.is_dir() or (run / "config.json").is_file():
        return path
    if (run / "final" / "config.json").is_file():
        chosen = run / "final"
    else:
        try:
            chosen = latest_checkpoint(run)
        except CheckpointError:
            return path  # loading reports the directory as it is
        if chosen is None or not (chosen / "config.json").is_file():
            return path
    print(f"--model {path}: a training run; using {chosen}", file=sys.stderr)
    return str(chosen)
