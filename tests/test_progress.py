"""Long phases show a tqdm bar with the time left on a terminal, and stay silent elsewhere or when asked."""

import io

import pytest
import torch

from wavedensity.eval import evaluate
from wavedensity.models import WDAConfig, WDAForCausalLM
from wavedensity.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def windows():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(32, (6, 16), generator=generator)
    return [(row, row, torch.ones_like(row)) for row in ids]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return WDAForCausalLM(WDAConfig(vocab_size=32, seq_len=16, embed_dim=16, num_layers=1, num_heads=2, num_masks=2,
                                    num_waves_per_mask=2, topk_masks=1))


def test_evaluation_shows_a_bar_with_the_time_left_on_a_terminal(monkeypatch, model, windows):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    quiet = evaluate(model, windows, batch_size=2)
    assert terminal.getvalue() == ""  # progress is off unless asked for
    shown = evaluate(model, windows, batch_size=2, progress=True, desc="final eval")
    assert shown == quiet
    text = terminal.getvalue()
    assert "final eval" in text and "/3 [" in text and "<" in text  # batches of 3, [elapsed<time left]


def test_no_bar_when_stderr_is_not_a_terminal(capsys, model, windows):
    evaluate(model, windows, batch_size=2, progress=True)
    for _ in progress_bar(range(3), desc="phase"):
        pass
    assert capsys.readouterr().err == ""
