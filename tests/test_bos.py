"""Windows start with the tokenizer's bos when it adds one (Gemma-3's does; its loss without it is far
off its pretraining), and stay plain slices of the token stream when it does not (GPT-2's, SmolLM2's,
our char / BPE tokenizers): training rows, evaluation windows, ``wda transplant train`` and ``eval``."""

import json

import pytest
import torch
from tokenizers import processors
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, GPT2TokenizerFast

from test_data import DOCS, raises_one_line
from test_transplant_cli import TEXT, run, write_config
from wavedensity.data import (BlockSampler, Example, Mixture, TokenizedCorpus, added_bos, eval_blocks, make_tokenizer,
                              render_chat, tokenize_examples, train_char_tokenizer)
from wavedensity.data.sampling import IGNORE

BOS = "<bos>"


def char_tokenizer(texts, bos: str | None = None, adds_bos: bool = False):
    """A character tokenizer naming ``bos`` as its bos token; with ``adds_bos`` its post-processor puts it
    first, as Gemma's does (``TemplateProcessing``); without, it is only named, as SmolLM2's
    ``<|im_start|>`` and GPT-2's ``<|endoftext|>`` are."""
    tokenizer = train_char_tokenizer(texts)
    if bos is not None:
        tokenizer.add_special_tokens({"bos_token": bos})
    if adds_bos:
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    return tokenizer


def test_added_bos_is_the_token_the_tokenizer_puts_first():
    gemma_like = char_tokenizer(DOCS, BOS, adds_bos=True)
    assert gemma_like("ab").input_ids[0] == gemma_like.bos_token_id  # the tokenizer really adds it
    assert added_bos(gemma_like) == gemma_like.bos_token_id
    assert added_bos(char_tokenizer(DOCS, "<|im_start|>")) is None  # named, never added: SmolLM2's
    vocab, merges = {"<|endoftext|>": 0, "a": 1, "\u0120": 2, "b": 3, "\u0120b": 4}, [("\u0120", "b")]
    gpt2 = GPT2TokenizerFast(vocab=vocab, merges=merges)  # GPT-2's class: bos <|endoftext|>, not added
    assert gpt2.bos_token_id == 0 and gpt2("a b").input_ids == [1, 4] and added_bos(gpt2) is None
    assert added_bos(GPT2TokenizerFast(vocab=vocab, merges=merges, add_bos_token=True)) == 0
    assert added_bos(make_tokenizer("char", DOCS)) is None
    assert added_bos(make_tokenizer("bpe:300", DOCS * 10)) is None


@pytest.mark.parametrize("seq_len", [1, 2, 7, 64])
def test_eval_windows_start_with_bos_and_predict_every_token_once(seq_len):
    tokenizer = char_tokenizer(DOCS, BOS, adds_bos=True)
    examples = [Example(d) for d in DOCS] + [render_chat([{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "hello"}])]
    corpus = tokenize_examples(examples, tokenizer)
    bos = tokenizer.bos_token_id
    assert corpus.bos_id == bos and bos not in corpus.ids.tolist()  # in the windows only, never the stream
    windows = list(eval_blocks(corpus, seq_len))
    assert all(inputs[0] == bos and len(inputs) == len(labels) <= seq_len for inputs, labels, _ in windows)
    # [bos] + the stream before each label: every token, the first included, predicted once with its bytes
    for start, (inputs, labels, _) in zip(_starts(windows), windows):
        assert inputs.tolist() == [bos] + corpus.ids[start:start + len(labels) - 1].tolist()
    labels = torch.cat([labels for _, labels, _ in windows])
    assert labels.tolist() == torch.where(corpus.loss_mask, corpus.ids, IGNORE).tolist()
    assert sum(int(b.sum()) for _, _, b in windows) == int(corpus.token_bytes[corpus.loss_mask].sum())
    plain = tokenize_examples([Example(d) for d in DOCS], tokenizer)
    assert int(plain.token_bytes.sum()) == sum(len(d.encode("utf-8")) for d in DOCS)  # a bos covers no byte


def _starts(windows) -> list[int]:
    """Where each window begins in the stream: the windows follow each other, each as long as its labels."""
    starts, position = [], 0
    for _, labels, _ in windows:
        starts.append(position)
        position += len(labels)
    return starts


def test_training_rows_start_with_bos_and_an_epoch_predicts_every_token_once():
    corpus = TokenizedCorpus(torch.arange(1000), torch.ones(1000, dtype=torch.bool),
                             torch.ones(1000, dtype=torch.long), bos_id=5000)
    sampler = BlockSampler(corpus, 16, 4, seed=0)  # 62 blocks of 16 and a last one ending at the corpus end
    assert sampler.blocks_per_epoch == 63
    rows = [sampler.row(i) for i in range(63)]
    whole = [(inputs, labels) for inputs, labels in rows if not labels.eq(IGNORE).any()]
    assert len(whole) == 62 and all(inputs.tolist() == [5000] + labels[:-1].tolist() for inputs, labels in whole)
    predicted = torch.cat([labels for _, labels in rows])
    assert sorted(predicted[predicted != IGNORE].tolist()) == list(range(1000))  # token 0 too, each once
    # the last block: [bos] + 984..998, labels 984..999 with those the block before it predicts ignored
    ((inputs, labels),) = [row for row in rows if row[1].eq(IGNORE).any()]
    assert inputs.tolist() == [5000] + list(range(984, 999))
    assert labels.tolist() == [IGNORE] * 8 + list(range(992, 1000))
    exact = BlockSampler(corpus.head(16), 16, 1, seed=0)  # 16 tokens fill one row behind a bos
    assert exact.row(0)[1].tolist() == list(range(16))
    raises_one_line(lambda: BlockSampler(corpus.head(15), 16, 1, 0), "too short for seq_len 16 (needs 16)")
    mixed = Mixture([(corpus, 1.0), (corpus.head(100), 1.0)], 8, 4, seed=0).batch(0)[0]
    assert mixed[:, 0].eq(5000).all()


def test_windows_of_a_tokenizer_that_adds_no_bos_are_plain_slices():
    """SmolLM2's tokenizer names a bos it never adds: its windows are the stream's slices, as before."""
    named = char_tokenizer(DOCS, "<|im_start|>")
    corpus = tokenize_examples([Example(d) for d in DOCS], named)
    assert corpus.bos_id is None and corpus.first_label == 1
    windows = list(eval_blocks(corpus, 7))
    for start, (inputs, labels, nbytes) in zip(_starts(windows), windows):  # start: the window's first input
        assert torch.equal(inputs, corpus.ids[start:start + len(inputs)])
        assert torch.equal(labels, corpus.ids[start + 1:start + 1 + len(inputs)])
        assert torch.equal(nbytes, corpus.token_bytes[start + 1:start + 1 + len(inputs)])
    assert _starts(windows)[-1] + len(windows[-1][0]) == len(corpus) - 1  # every token but the first predicted
    unnamed = tokenize_examples([Example(d) for d in DOCS], train_char_tokenizer(DOCS))
    assert all(torch.equal(a, b) for x, y in zip(eval_blocks(corpus, 7), eval_blocks(unnamed, 7)) for a, b in zip(x, y))
    sampler, reference = BlockSampler(corpus, 7, 3, seed=1), BlockSampler(unnamed, 7, 3, seed=1)
    assert all(torch.equal(a, b) for step in range(5) for a, b in zip(sampler.batch(step), reference.batch(step)))
    inputs, labels = sampler.batch(0)
    assert torch.equal(inputs[:, 1:], torch.where(labels[:, :-1] == IGNORE, inputs[:, 1:], labels[:, :-1]))


# ---- a tiny Gemma-3 teacher whose tokenizer adds <bos>: what the teacher sees in transplant train / eval --


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    tokenizer = char_tokenizer([TEXT], BOS, adds_bos=True)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=24, intermediate_size=48, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, num_hidden_layers=2, sliding_window=8, max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention"], bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    return root


@pytest.fixture
def first_tokens():
    """The first input token of every row the teacher's embedding reads while the test runs."""
    seen = []

    def record(module, args):
        if isinstance(module, torch.nn.Embedding) and args and args[0].dim() == 2:
            seen.extend(args[0][:, 0].tolist())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    yield seen
    handle.remove()


def test_transplant_train_and_eval_feed_the_teacher_bos_first(tmp_path, gemma_dir, first_tokens, capsys):
    bos = AutoTokenizer.from_pretrained(gemma_dir / "model").bos_token_id  # saved and reloaded, still adding it
    config = write_config(tmp_path / "c.json", gemma_dir, steps=3, attention_transfer={"steps": 2, "lr": 1e-2},
                          eval_every=100, save_every=100)
    assert run(capsys, "transplant", "train", "--config", str(config), "--out", str(tmp_path / "run"))[0] == 0
    assert first_tokens and set(first_tokens) == {bos}  # transfer rows, end-to-end rows, validation
    first_tokens.clear()
    code, out, _ = run(capsys, "transplant", "eval", "--config", str(config), "--adapter", str(tmp_path / "run"),
                       "--data", str(gemma_dir / "data.txt"), "--window", "32", "--max-windows", "3", "--json")
    assert code == 0 and json.loads(out)["teacher"]["tokens"] == 3 * 32
    assert len(first_tokens) >= 3 * 3 and set(first_tokens) == {bos}  # teacher, teacher-free and mixed
