"""The benchmark scripts in bench/, each run once on its smallest size so they never rot (no timings asserted)."""

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ is a top-level package beside src/, not installed


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- bench.mqar: associative recall --------------------------------------------------------------


def test_mqar_smoke(one_thread):
    from bench import mqar

    modes = ",".join(mqar.MODES)  # the default four and the pre-norm reference
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        assert mqar.main(["--smoke", "--modes", modes]) == 0
    text = printed.getvalue()
    assert text.startswith(f"`python -m bench.mqar --smoke --modes {modes}`")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| mode ")]
    assert [row.split("|")[1].strip() for row in rows] == list(mqar.MODES)
    for row in rows:
        accuracy = float(row.split("|")[7])  # after mode, init, width, seq_len, pairs, parameters
        assert 0.0 <= accuracy <= 1.0
    assert "Total wall time" in text


def test_mqar_schedules_warm_up_then_hold_or_decay_toward_zero():
    from types import SimpleNamespace

    from bench.mqar import lr_factor

    args = SimpleNamespace(warmup=10, steps=110, schedule="cosine")
    factors = [lr_factor(step, args) for step in range(args.steps)]
    assert factors[0] == 0.1 and factors[9] == 1.0 and factors[10] == 1.0
    assert abs(factors[60] - 0.5) < 1e-12 and 0 < factors[-1] < 1e-3
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    args.schedule = "constant"
    assert [lr_factor(step, args) for step in (9, 10, 109)] == [1.0, 1.0, 1.0]
    args.schedule, args.decay_fraction = "wsd", 0.2
    factors = [lr_factor(step, args) for step in range(args.steps)]
    assert factors[0] == 0.1 and factors[10:88] == [1.0] * 78
    assert factors[88] == 1.0 and abs(factors[99] - 0.5) < 1e-12 and abs(factors[-1] - 1 / 22) < 1e-12
    assert all(a > b for a, b in zip(factors[88:], factors[89:]))


@pytest.mark.parametrize("seq_len, pairs, queries", [(64, 4, None), (64, 4, 4), (32, 2, 5), (40, 10, None)])
def test_mqar_data_is_well_formed(seq_len, pairs, queries):
    from bench.mqar import FILLER, KEYS, VALUES, first_queries, make_batch

    inputs, labels = make_batch(16, seq_len, pairs, torch.Generator().manual_seed(3), queries)
    first = first_queries(inputs, labels)
    assert inputs.shape == labels.shape == (16, seq_len) and inputs.dtype == labels.dtype == torch.long
    slots = (seq_len - 2 * pairs) // 2
    for row_in, row_lab, row_first in zip(inputs.tolist(), labels.tolist(), first.tolist()):
        keys, values = row_in[0 : 2 * pairs : 2], row_in[1 : 2 * pairs : 2]
        assert len(set(keys)) == pairs and all(k in KEYS for k in keys)  # distinct keys from the lower half
        assert all(v in VALUES for v in values)  # values from the upper half
        paired = dict(zip(keys, values))
        positions = [t for t, label in enumerate(row_lab) if label != -100]
        assert len(positions) == (slots if queries is None else queries)
        for t in positions:
            assert t >= 2 * pairs and (t - 2 * pairs) % 2 == 0  # a query slot after the pairs
            assert row_in[t] in row_in[:t]  # the queried key appeared earlier in the sequence...
            assert row_in[t] in keys  # ...as a key of the pairs
            assert row_lab[t] == paired[row_in[t]]  # label: exactly the paired value...
            assert row_in[t + 1] == row_lab[t]  # ...which is also the next input token
            assert row_first[t] == (row_in[t] not in row_in[2 * pairs : t])  # first time this key is asked
        # Every other label is -100 and the rest of the tail is filler.
        assert all(row_lab[t] == -100 for t in range(seq_len) if t not in positions)
        answers = {t + 1 for t in positions}
        assert all(row_in[t] == FILLER for t in range(2 * pairs, seq_len) if t not in positions and t not in answers)
        assert sum(row_first) == len(set(row_in[t] for t in positions))
        # Every key is queried equally often, to within one.
        asked = [row_in[t] for t in positions]
        counts = [asked.count(k) for k in keys]
        assert max(counts) - min(counts) <= 1
        if queries == pairs:
            assert sorted(asked) == sorted(keys)  # Zoology: each key exactly once


def test_mqar_data_is_seeded_and_rejects_impossible_sizes():
    from bench.mqar import make_batch

    first = make_batch(4, 64, 4, torch.Generator().manual_seed(7))
    again = make_batch(4, 64, 4, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(ValueError):
        make_batch(1, 16, 8, torch.Generator())  # no room left for a query
    with pytest.raises(ValueError):
        make_batch(1, 1024, 200, torch.Generator())  # more pairs than distinct keys


# --- the other benchmark scripts, each on its smallest size -------------------------------------


def printed_by(fn, argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        fn(argv)
    return out.getvalue()


def test_toeplitz_paths_smoke(one_thread):
    from bench import toeplitz_paths

    assert "| 16 |" in printed_by(toeplitz_paths.main, ["--lengths", "16", "--repeats", "1", "--batch", "1"])
    picked = printed_by(toeplitz_paths.main, ["--lengths", "16", "--repeats", "1", "--batch", "1",
                                              "--columns", "density mix: fft,conv fft"])
    assert "| S | density mix: fft | conv fft |" in picked and "per-position" not in picked


def test_layer_scaling_smoke(one_thread):
    from bench import layer_scaling

    text = printed_by(layer_scaling.main, ["--lengths", "32", "--dim", "32", "--heads", "2", "--repeats", "1",
                                           "--variants", "softmax (SDPA),wda prefix dense"])
    assert "| wda prefix dense | " in text and "failed" not in text


def test_throughput_smoke(one_thread):
    from bench import throughput

    text = printed_by(throughput.main, ["--preset", "cpu-tiny", "--seq", "16", "--train-batch", "2", "--steps", "1",
                                        "--decode-batches", "1", "--new-tokens", "2", "--compiled-decoding",
                                        "--decoding-layout", "--mixers", "wda"])
    assert "| wda |" in text and "| wda compiled |" in text and "| wda decoding layout |" in text


def test_throughput_trains_copies_with_compiled_blocks_beside_the_eager_models(one_thread):
    from bench import throughput

    text = printed_by(throughput.main, ["--preset", "cpu-tiny", "--seq", "16", "--train-batch", "2", "--steps", "1",
                                        "--no-decode", "--compiled-training", "--mixers", "wda"])  # inductor: ~30 s
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) == {"mixer", "wda", "wda (compiled blocks)"}
    assert all(rows[name].split("|")[3].strip() != "-" for name in rows if name != "mixer")  # every copy trained


def test_throughput_measures_a_package_copy_beside_this_one(one_thread):
    from bench import throughput

    src = str(Path(__file__).resolve().parents[1] / "src")
    text = printed_by(throughput.main, ["--preset", "cpu-tiny", "--seq", "16", "--train-batch", "2", "--steps", "1",
                                        "--no-decode", "--mixers", "wda", "--baseline-src", src])
    assert "| wda |" in text and f"| wda ({src}) |" in text


def test_decode_profile_smoke(one_thread):
    from bench import decode_profile

    src = str(Path(__file__).resolve().parents[1] / "src")
    text = printed_by(decode_profile.main, ["--preset", "cpu-tiny", "--seq", "16", "--batches", "1,2", "--prompts", "3",
                                            "--rounds", "2", "--baseline-src", src])
    rows = [line for line in text.splitlines() if line.startswith("| b=")]
    assert len(rows) == 4 and sum(f"| {src} |" in line for line in rows) == 2


def test_profile_step_smoke(one_thread):
    from bench import profile_step

    text = printed_by(profile_step.main, ["--preset", "cpu-tiny", "--batch", "2", "--seq", "16", "--top", "3"])
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| operator ")]
    assert len(rows) == 3 and all(line.endswith(" |") for line in rows)


def test_quality_and_leak_audit_smoke(one_thread, tmp_path):
    from bench import leak_audit, quality

    if not quality.SHARED.is_dir():
        pytest.skip(f"shared data not found at {quality.SHARED}")
    text = printed_by(leak_audit.main, ["--preset", "tiny", "--steps", "2", "--windows", "1", "--out", str(tmp_path)])
    assert "| pooled (release) |" in text and "| prefix (causal) |" in text
    text = printed_by(quality.main, ["shakespeare", "--preset", "tiny", "--steps", "2", "--budget", "time",
                                     "--rounds", "1", "--out", str(tmp_path)])
    for variant in quality.VARIANTS:
        assert f"| {variant} |" in text
    assert (tmp_path / "shakespeare-tiny-time-2-s0.png").is_file()


def test_transplant_smoke(one_thread, tmp_path):
    from bench import quality, transplant

    if not quality.SHARED.is_dir():
        pytest.skip(f"shared data not found at {quality.SHARED}")
    text = printed_by(transplant.main, ["--smoke", "--out", str(tmp_path)])
    assert "| transplant, teacher-free |" in text and "| WDA from scratch |" in text and "top-1 agreement" in text


def test_transplant_real_smoke(one_thread, tmp_path):
    import json

    from bench import quality, transplant_real

    if not quality.SHARED.is_dir():
        pytest.skip(f"shared data not found at {quality.SHARED}")
    printed_by(transplant_real.main, ["--smoke", "--out", str(tmp_path), "--json", str(tmp_path / "r.json")])
    phases = [p["phase"] for p in json.loads((tmp_path / "r.json").read_text())["phases"]]
    expected = ["teacher", "teacher-free after transfer (init vo+qk+gate)", "cached decoding",
                "teacher-free after transfer + 1 end", "hybrid keeping 25%", "teacher-free after transfer (random",
                "hybrid keeping 50%"]  # the default --rows order
    assert len(phases) == len(expected) and all(p.startswith(e) for p, e in zip(phases, expected)), phases
    first = json.loads((tmp_path / "r.json").read_text())["phases"]
    printed_by(transplant_real.main, ["--smoke", "--reuse-transfer", "--rows", "hybrid25", "--out", str(tmp_path),
                                      "--json", str(tmp_path / "again.json")])
    again = json.loads((tmp_path / "again.json").read_text())["phases"]
    assert [p["phase"] for p in again] == [p["phase"] for p in (first[0], first[1], first[4])]
    assert again[1]["reused_from"] == str(tmp_path / "transfer-init")
    assert [p["loss"] for p in again] == [p["loss"] for p in (first[0], first[1], first[4])]  # the same adapter
    text = printed_by(transplant_real.main, ["--teacher", str(tmp_path / "tiny-teacher"), "--seq", "32", "--init-loss",
                                             "--out", str(tmp_path)])
    assert set(json.loads(text.strip().splitlines()[-1])) == {"random", "vo", "vo+qk", "vo+qk+gate"}


def test_gpu_check_dry_run(one_thread):
    from bench import gpu_check

    text = printed_by(gpu_check.main, ["--dry-run"])
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| measurement")]
    assert [row.split("|")[1].strip() for row in table] == [
        "train tokens/s", "train MFU", "train GFLOP/token (counted)", "decode tokens/s, cached, batch 1",
        "layer fwd+bwd, S=64", "layer fwd+bwd, S=128", "layer fwd+bwd, S=256",
        "dense vs FFT Toeplitz (one kernel per sequence)", "train tokens/s, compiled blocks (eager)"]
    assert "failed" not in text and "skipped" not in text and "out of memory" not in text


def test_mqar_recall_modes_smoke_and_zoology_data(one_thread):
    from bench import mqar

    inputs, labels = mqar.zoology_batch(8, 64, 4, 8192, torch.Generator().manual_seed(0))
    queried = labels != -100
    assert queried.sum(1).tolist() == [4] * 8  # one query per key
    for row in range(8):
        pairs = dict(zip(inputs[row, 0:8:2].tolist(), inputs[row, 1:8:2].tolist()))
        assert len(pairs) == 4 and all(k < 4096 <= v for k, v in pairs.items())
        for t in queried[row].nonzero().flatten().tolist():
            assert labels[row, t] == pairs[int(inputs[row, t])] and inputs[row, t + 1] == 0  # the answer is not shown
    modes = ",".join(mqar.RECALL_MODES)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        assert mqar.main(["--smoke", "--modes", modes]) == 0
    rows = [line for line in printed.getvalue().splitlines() if line.startswith("| ") and not line.startswith("| mode ")]
    assert [row.split("|")[1].strip() for row in rows] == list(mqar.RECALL_MODES)


def test_mqar_times_both_taylor_forms(one_thread):
    from bench import mqar

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert mqar.main(["--time-taylor", "--batch", "2", "--seq-lens", "9", "--pairs", "2", "--content-rank", "3"]) == 0
    assert "kernel form" in printed.getvalue() and "features / kernel form" in printed.getvalue()


def test_cpu_recall_preset_is_the_measured_pure_wda_row():
    from types import SimpleNamespace

    from bench import mqar
    from wavedensity import preset_config

    bench_args = SimpleNamespace(task="zoology", vocab=8192, heads=2, tie=True, ffn=False, content_rank=16,
                                 content_mix=0.5)  # the zoology task's defaults
    measured = mqar.model_config("taylor-c4-unnorm", 128, 256, "normal", bench_args)
    preset = preset_config("cpu-recall")
    assert preset.to_diff_dict() == measured.to_diff_dict()
    assert "softmax" not in preset.layer_mixers() and preset.sliding_window == 0
