"""torch.distributed training on the CPU (gloo): the global batch split over ranks and micro-steps,
two ranks against one, checkpoints moving between world sizes and strategies, no row read twice."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wavedensity
from wavedensity.data import BlockSampler
from wavedensity.data.corpus import TokenizedCorpus
from wavedensity.train import TrainConfig, preset_train_config, train
from wavedensity.train.config import ConfigError
from wavedensity.train.distributed import BatchLayout, Runtime, ShardedBatches

SRC = Path(wavedensity.__file__).resolve().parents[1]
TEXT = "".join(f"Line {i}: a small corpus for two ranks, {i % 7} times over.\n" for i in range(300))


# --- which rank reads which rows -----------------------------------------------------------------------


@pytest.mark.parametrize("world_size,grad_accum", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2), (4, 1)])
def test_batch_layout_gives_each_row_of_a_step_to_exactly_one_micro_batch(world_size, grad_accum):
    layout = BatchLayout(2 * world_size * grad_accum, grad_accum, world_size)
    assert layout.micro_batch == 2
    for step in range(5):
        read = [row for rank in range(world_size) for micro in range(grad_accum)
                for row in layout.rows(step, micro, rank)]
        assert sorted(read) == list(range(step * layout.batch_size, (step + 1) * layout.batch_size))
    if world_size == 1:  # one process reads micro-batch m of step s at rows s*B + m*micro, as before ranks existed
        assert list(layout.rows(3, grad_accum - 1, 0)) == [3 * layout.batch_size + (grad_accum - 1) * 2 + i
                                                           for i in range(2)]


def test_batch_layout_refuses_a_batch_it_cannot_split():
    with pytest.raises(ConfigError, match="batch_size 10 .* divisible by grad_accum 2 x world size 4"):
        BatchLayout(10, 2, 4)
    with pytest.raises(ValueError, match="no micro-batch 2 of rank 0"):
        BatchLayout(8, 2, 2).rows(0, 2, 0)


def test_ranks_read_disjoint_rows_that_together_are_the_global_batch():
    # token i has id i, so a row's first input id names the block it starts; one epoch is 62 blocks
    corpus = TokenizedCorpus(torch.arange(1000), torch.ones(1000, dtype=torch.bool), torch.ones(1000, dtype=torch.long))
    sampler = BlockSampler(corpus, 16, 8, seed=5)
    layout = BatchLayout(8, 2, 2)
    loaders = [ShardedBatches(sampler, layout, Runtime(rank=rank, world_size=2)) for rank in range(2)]
    try:
        starts = []
        for step in range(7):  # 56 rows, all inside the first epoch
            per_rank = [loader.get(step) for loader in loaders]
            inputs = torch.cat([ids for parts in per_rank for ids, _ in parts])
            labels = torch.cat([labels for parts in per_rank for _, labels in parts])
            assert all(ids.shape == (2, 16) for parts in per_rank for ids, _ in parts)
            global_inputs, global_labels = sampler.batch(step)
            assert torch.equal(inputs, global_inputs) and torch.equal(labels, global_labels)
            starts += inputs[:, 0].tolist()
        assert len(starts) == len(set(starts)) == 56  # no sample read twice, by any rank
    finally:
        for loader in loaders:
            loader.close()


# --- two ranks against one, checkpoints across world sizes and strategies ----------------------------


def config_values(corpus: Path, **overrides) -> dict:
    # constant learning rate, so runs that stop or resume at different steps share one schedule;
    # validation reads every window, so periodic and final evaluations compare
    return {**preset_train_config("tiny").to_dict(), "data": [str(corpus)], "split": "tail", "batch_size": 8,
            "warmup_steps": 0, "min_lr_ratio": 1.0, "log_every": 1, "eval_every": 3, "eval_batches": 100,
            "save_every": 3, **overrides}


def rows(run: Path) -> dict[tuple[int, str], float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keyed = {(r["step"], r["kind"]): r["loss"] for r in lines}
    assert len(keyed) == len(lines), "a metrics row was written twice (by two ranks?)"
    return keyed


def torchrun(*args: str) -> None:
    """``wda ARGS`` launched on 2 CPU processes (gloo); fails the test with the processes' stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC), "TRANSFORMERS_VERBOSITY": "error"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "wavedensity.cli", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def rewind(run: Path, step: int, copy: Path) -> Path:
    """A copy of ``run`` as a crash right after checkpoint ``step`` leaves it."""
    shutil.copytree(run, copy)
    for checkpoint in (copy / "checkpoints").glob("step-*"):
        if int(checkpoint.name.removeprefix("step-")) > step:
            shutil.rmtree(checkpoint)
    (copy / "checkpoints" / "latest.json").write_text(json.dumps({"step": step, "path": f"step-{step:06d}"}))
    return copy


def test_two_ranks_follow_one_and_checkpoints_move_between_world_sizes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    single = tmp_path / "single"
    train(TrainConfig.from_dict(config_values(corpus, steps=9)), single, progress=False, log=lambda message: None)
    reference = rows(single)

    # DDP, 2 ranks x 2 micro-steps x 2 rows = the same 8-row global batch
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_values(corpus, steps=6)))
    ddp = tmp_path / "ddp"
    torchrun("train", "--config", str(config), "--out", str(ddp), "--grad-accum", "2")
    for key, loss in rows(ddp).items():
        assert abs(loss - reference[key]) <= 1e-5, (key, loss, reference[key])
    assert json.loads((ddp / "checkpoints" / "step-000003" / "trainer_state.json").read_text())["tokens_seen"] == 3 * 8 * 64

    # DDP's step-3 checkpoint continued by FSDP2 on 2 ranks (sharded optimizer load, gathered save)
    fsdp = rewind(ddp, 3, tmp_path / "fsdp")
    torchrun("train", "--out", str(fsdp), "--resume", "--distributed", "fsdp2", "--grad-accum", "1")
    # FSDP2's step-6 checkpoint continued by one process to step 9
    one = rewind(fsdp, 6, tmp_path / "one")
    resumed = TrainConfig.from_dict({**json.loads((one / "run.json").read_text()), "steps": 9})
    train(resumed, one, resume=True, progress=False, log=lambda message: None)
    for run in (fsdp, one):
        assert rows(run).keys() == {key for key in reference if key[0] <= max(k[0] for k in rows(run))}
        for key, loss in rows(run).items():
            assert abs(loss - reference[key]) <= 1e-5, (run.name, key, loss, reference[key])
