"""The data layer: sources, bad input, chat loss masks, tokenizers, byte counts, splits, batches."""

import gzip
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import wavedensity.data.default as default_module
from wavedensity.data import (BlockSampler, DataError, Example, Mixture, TokenizedCorpus, check_tokenizer_fits,
                              default_corpus, eval_blocks, load_tokenizer, make_tokenizer, parse_hh, read_examples,
                              render_chat, split_train_val, tokenize_examples, train_bpe_tokenizer,
                              train_char_tokenizer)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IGNORE = -100


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (expected ../shared/data beside the repository)")
    return SHARED_DATA


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def chat_row(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": role, "content": content} for role, content in turns]})


def raises_one_line(func, *expected: str) -> str:
    """Run ``func``; it must raise DataError whose one-line message holds every ``expected`` text."""
    with pytest.raises(DataError) as caught:
        func()
    message = str(caught.value)
    assert "\n" not in message, message
    for part in expected:
        assert part in message, (part, message)
    return message


# --- bad input: one line naming the file, the line and the problem ---------------------------------

BAD_FILES = {
    # name: (file name, content, expected message after "PATH")
    "missing file": ("absent.txt", None, ": no such file or directory"),
    "empty text file": ("empty.txt", b"", ": empty file"),
    "blank text file": ("blank.md", b" \n\n", ": empty file"),
    "empty jsonl": ("empty.jsonl", b"\n", ": empty file"),
    "non-UTF-8 text": ("latin1.txt", "caf\u00e9\nna\u00efve\n".encode("latin-1"), ":1: not UTF-8 text (byte 0xe9)"),
    "binary text": ("blob.txt", b"header\nmore\n\x00\x01\x02", ":3: binary content"),
    "non-UTF-8 jsonl line": ("bad.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n', ":2: not UTF-8 text"),
    "jsonl line not JSON": ("bad.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', ":3: not JSON"),
    "jsonl row lacks field": ("bad.jsonl", b'{"text": "a"}\n{"txt": "b"}\n', ":2: row lacks the field 'text'"),
    "jsonl row not object": ("bad.jsonl", b'["text", "a"]\n', ":1: row is a JSON list, not an object"),
    "text not a string": ("bad.jsonl", b'{"text": 5}\n', ":1: field 'text' is a int, not a string"),
    "unknown chat role": ("chat.jsonl", (chat_row(("user", "hi"), ("assistant", "yo")) + "\n"
                                         + chat_row(("user", "hi"), ("robot", "beep")) + "\n").encode(),
                          ":2: messages[1] has unknown role 'robot'"),
    "chat messages not a list": ("chat.jsonl", b'{"messages": "User: hi"}\n',
                                 ":1: 'messages' must be a non-empty list"),
    "chat content not a string": ("chat.jsonl", b'{"messages": [{"role": "user", "content": ["hi"]}]}\n',
                                  ":1: messages[0] must be an object with a string 'content'"),
    "HH transcript malformed": ("hh.jsonl", b'{"chosen": "Human: hi\\n\\nAssistant: yo"}\n',
                                ":1: HH transcript must be a string starting with"),
    "gzip not gzip": ("rows.jsonl.gz", b'{"text": "plain, not gzip"}\n', ": not a readable gzip file"),
    "json not JSON": ("rows.json", b'[\n{"text": "a"},\n{"text": }\n]', ":3: not JSON"),
    "json row lacks field": ("rows.json", b'[{"text": "a"}, {"body": "b"}]', ": row 2: row lacks the field 'text'"),
    "unknown source type": ("table.csv", b"a,b\n1,2\n", ": unknown source type"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_raises_data_error_naming_file_line_and_problem(tmp_path, case):
    name, content, problem = BAD_FILES[case]
    path = tmp_path / name
    if content is not None:
        write(path, content)
    raises_one_line(lambda: list(read_examples(path)), f"{path}{problem}")


def test_bad_folder_and_gzip_line(tmp_path):
    raises_one_line(lambda: read_examples(tmp_path), str(tmp_path), "folder holds no .txt, .md, .raw files")
    gz = write(tmp_path / "rows.jsonl.gz", gzip.compress(b'{"text": "a"}\n\n{"text": "b"}\nnot json\n'))
    raises_one_line(lambda: list(read_examples(gz)), f"{gz}:4: not JSON")  # line numbers count blank lines


def test_bad_source_specs(tmp_path):
    raises_one_line(lambda: read_examples("hf:only-a-name"), "hf:only-a-name: malformed Hugging Face spec")
    raises_one_line(lambda: read_examples("hf:json:"), "hf:json:: malformed Hugging Face spec")
    missing = tmp_path / "absent.jsonl"
    raises_one_line(lambda: read_examples(f"hf:json:{missing}"), f"hf:json:{missing}: {missing}: no such file")


def test_bad_rows_through_datasets_name_the_spec_and_row(tmp_path):
    lacking = write(tmp_path / "lacking.jsonl", '{"text": "a"}\n{"body": "b"}\n')
    raises_one_line(lambda: list(read_examples(f"hf:json:{lacking}")),
                    f"hf:json:{lacking}: row 2: row lacks the field 'text'")
    broken = write(tmp_path / "broken.jsonl", '{"text": "a"}\n{"text": oops}\n')
    raises_one_line(lambda: list(read_examples(f"hf:json:{broken}")), f"hf:json:{broken}: cannot read past row 0")
    roles = write(tmp_path / "roles.jsonl", chat_row(("user", "hi"), ("robot", "beep")) + "\n")
    raises_one_line(lambda: list(read_examples(f"hf:json:{roles}")), "row 1: messages[1] has unknown role 'robot'")


# --- chat rendering and its loss mask ---------------------------------------------------------------

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye."}]
CHAT_TEXT = "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant: Bye.\n"


def test_chat_loss_mask_hand_checked():
    example = render_chat(CHAT)
    assert example.text == CHAT_TEXT
    # Counted by hand: "System: Be brief.\n" is 18 characters, "User: Hi\n" 9 (to 27), "Assistant:" 10,
    # so " Hello!\n" is 37..45; "User: Bye\n" 10 (to 55), "Assistant:" 10, so " Bye.\n" is 65..71.
    assert example.loss_spans == [(37, 45), (65, 71)]
    assert [example.text[a:b] for a, b in example.loss_spans] == [" Hello!\n", " Bye.\n"]
    assert render_chat(CHAT, assistant_only=False) == Example(CHAT_TEXT, None)

    # Character level: exactly the 14 characters " Hello!\n" and " Bye.\n" carry loss, plus the eos that
    # follows the final reply (the model learns to stop); no role prefix, system or user character does.
    tokenizer = train_char_tokenizer([CHAT_TEXT])
    corpus = tokenize_examples([example], tokenizer)
    assert len(corpus) == len(CHAT_TEXT) + 1
    mask = corpus.loss_mask.tolist()
    assert "".join(c for c, m in zip(CHAT_TEXT, mask) if m) == " Hello!\n Bye.\n"
    assert mask[-1] and int(corpus.ids[-1]) == tokenizer.eos_token_id
    # The labels of training: next tokens, IGNORE exactly where the predicted token carries no loss.
    inputs, labels, _ = next(eval_blocks(corpus, len(corpus)))
    assert tokenizer.decode([t for t in labels.tolist() if t != IGNORE]) == " Hello!\n Bye.\n" + tokenizer.eos_token
    # A conversation ending with the user: its eos carries no loss.
    assert not tokenize_examples([render_chat(CHAT[:4])], tokenizer).loss_mask[-1]


def test_chat_loss_mask_with_byte_level_bpe():
    """BPE tokens straddle boundaries; a token carries loss iff it covers reply text, and every byte
    piece of a reply's multi-byte character carries loss."""
    chat = [{"role": "user", "content": "Où est le café ?"},
            {"role": "assistant", "content": "Ici — 日本 😀 café."}]
    example = render_chat(chat)
    tokenizer = train_bpe_tokenizer([example.text] * 20 + [CHAT_TEXT] * 20, 300)
    corpus = tokenize_examples([example], tokenizer)
    (start, end), = example.loss_spans
    encoding = tokenizer.backend_tokenizer.encode(example.text, add_special_tokens=False)
    for (a, b), loss in zip(encoding.offsets, corpus.loss_mask.tolist()):
        if a < b:  # a token that reports text
            assert loss == (a < end and b > start), (example.text[a:b], loss)
    reply_bytes = corpus.token_bytes[:-1][corpus.loss_mask[:-1]].sum()
    # The loss tokens cover the reply and its newline, and at most the one space before it.
    assert len(example.text[start:end].encode()) <= reply_bytes <= len(example.text[start - 1:end].encode())


def test_hh_parsing_on_a_real_row(shared_data):
    path = shared_data / "chat-hh" / "helpful-base.test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        first = json.loads(next(lines))["chosen"]
        n_rows = 1 + sum(1 for _ in lines)
    turns = parse_hh(first)
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[0]["content"] == "Do you know why turkeys became the official food of thanksgiving?"
    assert turns[1]["content"].startswith("To be honest, I don\u2019t know anything about that.")
    assert first == "".join(f"\n\n{'Human' if t['role'] == 'user' else 'Assistant'}: {t['content']}" for t in turns)

    examples = list(read_examples(path))
    assert len(examples) == n_rows  # no row skipped
    (start, end), = examples[0].loss_spans
    assert examples[0].text.startswith("User: Do you know why turkeys")
    assert examples[0].text[start:end] == " " + turns[1]["content"] + "\n"
    assert examples[0].text[start - len("Assistant:"):start] == "Assistant:"


def test_gsm8k_rows_become_a_user_assistant_pair(shared_data):
    path = shared_data / "gsm8k" / "test.jsonl"
    with open(path, encoding="utf-8") as lines:
        row = json.loads(next(lines))
    example = next(read_examples(path))
    assert example == render_chat([{"role": "user", "content": row["question"]},
                                   {"role": "assistant", "content": row["answer"]}])


# --- sources: files, folders, and the datasets streaming path on local files -------------------------


def test_text_files_and_folders(tmp_path):
    write(tmp_path / "b.txt", "second\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.md", "# third\n")
    write(tmp_path / "a.md", "first\n")
    write(tmp_path / "notes.csv", "ignored: not a text source\n")
    assert [e.text for e in read_examples(tmp_path)] == ["first\n", "second\n", "# third\n"]
    assert list(read_examples(tmp_path / "b.txt")) == [Example("second\n", None)]


def test_streaming_through_datasets_on_local_c4_rows(shared_data):
    path = shared_data / "c4-sample" / "c4_demo.jsonl"
    streamed = list(read_examples(f"hf:json:{path}"))
    direct = list(read_examples(path))
    assert len(streamed) == 300 and streamed == direct
    assert all(e.loss_spans is None and e.text for e in streamed)


def test_streaming_through_datasets_on_local_messages_rows(tmp_path):
    path = write(tmp_path / "ultrachat.jsonl", "\n".join([
        chat_row(("user", "What is 2+2?"), ("assistant", "4.")),
        chat_row(("system", "Terse."), ("user", "Hi"), ("assistant", "Hi."), ("user", "Bye"), ("assistant", "Bye.")),
    ]) + "\n")
    streamed = list(read_examples(f"hf:json:{path}:train"))
    assert streamed == list(read_examples(path))
    assert streamed[0] == Example("User: What is 2+2?\nAssistant: 4.\n", [(29, 33)])
    assert list(read_examples(f"hf:json:{path}", assistant_only=False))[0].loss_spans is None


def test_hub_specs_call_load_dataset_streaming(monkeypatch):
    """The hub is unreachable here: check the call the real code makes, and that its rows flow through."""
    import datasets

    calls = []

    def fake_load_dataset(name, subset, *, split, data_files, streaming):
        calls.append((name, subset, split, data_files, streaming))
        if name == "allenai/c4":
            return iter([{"text": "A web page.", "timestamp": "2019", "url": "http://x"}])
        return iter([{"prompt": "Hi", "prompt_id": "0", "messages": [{"role": "user", "content": "Hi"},
                                                                   {"role": "assistant", "content": "Hello."}]}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(read_examples("hf:allenai/c4:en:train")) == [Example("A web page.", None)]
    assert list(read_examples("hf:HuggingFaceH4/ultrachat_200k:train_sft")) == [
        Example("User: Hi\nAssistant: Hello.\n", [(19, 27)])]
    assert calls == [("allenai/c4", "en", "train", None, True),
                     ("HuggingFaceH4/ultrachat_200k", None, "train_sft", None, True)]


# --- tokenizers -----------------------------------------------------------------------------------


def test_char_tokenizer_round_trip(tmp_path):
    tokenizer = make_tokenizer("char", ["hello world\n", "ab"])
    assert tokenizer.eos_token is not None and tokenizer.unk_token is not None
    assert tokenizer.convert_ids_to_tokens(list(range(3))) == ["\n", " ", "a"]  # sorted, like nanoGPT
    tokenizer.save_pretrained(tmp_path / "char")
    for loaded in (AutoTokenizer.from_pretrained(tmp_path / "char"), load_tokenizer(tmp_path / "char")):
        text = "hello\nworld ab"
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
        assert loaded("héllo")["input_ids"][1] == loaded.unk_token_id
        assert loaded.eos_token == tokenizer.eos_token


def test_bpe_tokenizer_round_trip(tmp_path):
    texts = ["The quick brown fox jumps over the lazy dog. Café, naïve, 日本語.\n"] * 50
    tokenizer = make_tokenizer("bpe:300", texts)
    assert len(tokenizer) == 300 and tokenizer.eos_token == "<|endoftext|>"
    tokenizer.save_pretrained(tmp_path / "bpe")
    text = "A quick café — never seen: 😀\n"
    for loaded in (AutoTokenizer.from_pretrained(tmp_path / "bpe"), load_tokenizer(tmp_path / "bpe"),
                   load_tokenizer(tmp_path / "bpe" / "tokenizer.json")):
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text  # byte level: nothing is unknown
        assert loaded.eos_token_id == tokenizer.eos_token_id


def test_tokenizer_errors_and_fit(tmp_path):
    raises_one_line(lambda: make_tokenizer("bpe:many", ["x"]), "bpe:many: expected bpe:N")
    raises_one_line(lambda: make_tokenizer("bpe:100", ["x"]), "bpe:100: vocabulary must hold at least 257")
    raises_one_line(lambda: make_tokenizer("char", []), "char: no text")
    raises_one_line(lambda: load_tokenizer(tmp_path / "absent"), f"{tmp_path / 'absent'}: no such file")
    raises_one_line(lambda: load_tokenizer(write(tmp_path / "junk.json", "{}")), "junk.json: cannot load a tokenizer")
    tokenizer = make_tokenizer("char", ["abc"])
    check_tokenizer_fits(tokenizer, len(tokenizer))
    check_tokenizer_fits(tokenizer, 1000)
    raises_one_line(lambda: check_tokenizer_fits(tokenizer, len(tokenizer) - 1),
                    f"{len(tokenizer)} tokens do not fit the model's vocab_size {len(tokenizer) - 1}")


# --- byte counts ------------------------------------------------------------------------------------

DOCS = ["Plain ASCII text.\n", "naïve café — 日本語 😀 emoji\n", "", "x", render_chat(CHAT[1:3]).text]


@pytest.mark.parametrize("kind", ["char", "bpe:300"])
def test_token_bytes_sum_to_each_documents_utf8_bytes(kind):
    tokenizer = make_tokenizer(kind, DOCS[:2] * 10)
    corpus = tokenize_examples([Example(d) for d in DOCS], tokenizer)
    eos = (corpus.ids == tokenizer.eos_token_id).nonzero().flatten().tolist()
    assert len(eos) == len(DOCS) and corpus.token_bytes[eos].eq(0).all()
    bounds = [-1] + eos
    per_doc = [int(corpus.token_bytes[a + 1:b].sum()) for a, b in zip(bounds, bounds[1:])]
    assert per_doc == [len(d.encode("utf-8")) for d in DOCS]
    # Evaluation windows predict every token but the first, exactly once, with its bytes.
    windows = list(eval_blocks(corpus, 7))
    assert torch.cat([labels for _, labels, _ in windows]).tolist() == corpus.ids[1:].tolist()
    assert torch.cat([inputs for inputs, _, _ in windows]).tolist() == corpus.ids[:-1].tolist()
    assert sum(int(b.sum()) for _, _, b in windows) == int(corpus.token_bytes[1:].sum())
    assert all(len(inputs) <= 7 for inputs, _, _ in windows)


# --- splits ---------------------------------------------------------------------------------------


def test_document_split_is_disjoint_stable_and_never_empty():
    docs = [Example(f"document number {i}\n") for i in range(200)] + [Example("document number 7\n")]
    train, val = split_train_val(docs, 0.1, "documents")
    assert len(train) + len(val) == len(docs)
    assert not {e.text for e in train} & {e.text for e in val}  # the duplicate lands beside its twin
    assert 5 <= len(val) <= 40
    assert split_train_val(docs, 0.1, "documents") == (train, val)
    more_train, more_val = split_train_val(docs + [Example(f"new {i}") for i in range(50)], 0.1, "documents")
    assert set(e.text for e in val) <= set(e.text for e in more_val)  # adding documents moves none
    for pair in ([Example("a"), Example("b")], [Example("only one"), Example("only two")]):
        t, v = split_train_val(pair, 0.01, "documents")
        assert len(t) == 1 and len(v) == 1
        t, v = split_train_val(pair, 0.99, "documents")
        assert len(t) == 1 and len(v) == 1


def test_tail_split_cuts_the_concatenated_text():
    docs = [Example("a" * 50), render_chat(CHAT), Example("z" * 30)]
    train, val = split_train_val(docs, 0.25, "tail")
    whole = "".join(e.text for e in docs)
    cut = int(len(whole) * 0.75)
    assert "".join(e.text for e in train) == whole[:cut] and "".join(e.text for e in val) == whole[cut:]
    # The chat straddles the cut: its loss spans are clipped and shifted, covering the same characters.
    chat_train, chat_val = train[1], val[0]
    kept = "".join(c.text[a:b] for c in (chat_train, chat_val) for a, b in c.loss_spans)
    assert kept == " Hello!\n Bye.\n"
    raises_one_line(lambda: split_train_val(docs, 0.1, "random"), "unknown split mode 'random'")
    raises_one_line(lambda: split_train_val(docs, 1.0, "tail"), "val_fraction 1.0")


def test_tail_split_is_the_nanogpt_tinyshakespeare_split(shared_data):
    (example,) = read_examples(shared_data / "tinyshakespeare" / "input.txt")
    train, val = split_train_val([example], 0.1, "tail")
    n = len(example.text)
    assert train[0].text == example.text[:int(n * 0.9)] and val[0].text == example.text[int(n * 0.9):]


# --- batches ------------------------------------------------------------------------------------------


def ramp(n: int, offset: int = 0, loss_every: int = 1) -> TokenizedCorpus:
    """Token i has id offset + i, so a label names the position it predicts."""
    return TokenizedCorpus(torch.arange(offset, offset + n), torch.arange(n) % loss_every == 0,
                           torch.ones(n, dtype=torch.long))


def test_block_sampler_is_a_pure_function_of_seed_and_step():
    corpus = ramp(1003)
    uninterrupted = BlockSampler(corpus, 16, 4, seed=3)
    batches = [uninterrupted.batch(step) for step in range(40)]
    inputs, labels = batches[0]
    assert inputs.shape == labels.shape == (4, 16)
    assert torch.equal(labels[labels != IGNORE], (inputs + 1)[labels != IGNORE])
    resumed = BlockSampler(corpus, 16, 4, seed=3)  # a fresh run asking for step 37 first
    for step in (37, 12, 0, 39):
        assert all(torch.equal(a, b) for a, b in zip(resumed.batch(step), batches[step]))
    assert not torch.equal(batches[5][0], batches[6][0])
    assert not torch.equal(BlockSampler(corpus, 16, 4, seed=4).batch(0)[0], inputs)


def test_block_sampler_epoch_reaches_every_token_once():
    corpus = ramp(1003)  # 1002 predictions: 62 blocks of 16 and a last block ending at the corpus end
    sampler = BlockSampler(corpus, 16, 4, seed=0)
    assert sampler.blocks_per_epoch == 63
    for epoch in range(2):
        rows = [sampler.row(epoch * 63 + i) for i in range(63)]
        seen = torch.cat([inputs for inputs, _ in rows] + [labels for _, labels in rows]).unique()
        assert seen[seen != IGNORE].tolist() == list(range(1003))
        predicted = torch.cat([labels for _, labels in rows])
        assert sorted(predicted[predicted != IGNORE].tolist()) == list(range(1, 1003))  # each exactly once
    masked = ramp(100, loss_every=3)  # loss on tokens 0, 3, 6, ...
    _, labels = BlockSampler(masked, 99, 1, seed=0).batch(0)  # one block, predicting tokens 1..99
    assert labels[0].tolist() == [t if t % 3 == 0 else IGNORE for t in range(1, 100)]
    raises_one_line(lambda: BlockSampler(ramp(16), 16, 1, 0), "corpus of 16 tokens is too short for seq_len 16")


def test_mixture_follows_the_ratios_deterministically():
    a, b = ramp(5000), ramp(3000, offset=10_000)
    mixture = Mixture([(a, 3.0), (b, 1.0)], 8, 16, seed=1)
    steps = range(200)
    sources = torch.cat([mixture.sources(step) for step in steps])
    assert abs(sources.eq(0).float().mean().item() - 0.75) < 0.03
    for step in (0, 17, 199):
        inputs, labels = mixture.batch(step)
        assert torch.equal((inputs[:, 0] >= 10_000).long(), mixture.sources(step))  # rows come from their source
        fresh = Mixture([(a, 3.0), (b, 1.0)], 8, 16, seed=1)
        assert all(torch.equal(x, y) for x, y in zip(fresh.batch(step), (inputs, labels)))
    # Each source reads its own block stream in order: no block repeats before its epoch ends.
    firsts = torch.cat([mixture.batch(step)[0][:, 0] for step in range(20)])
    assert firsts[firsts < 10_000].unique().numel() == firsts.lt(10_000).sum()
    raises_one_line(lambda: Mixture([(a, 1.0), (b, 0.0)], 8, 16, 0), "must all be positive")


# --- the embedded corpus ----------------------------------------------------------------------------


def test_default_corpus_holds_out_whole_plays(monkeypatch, tmp_path):
    plays = default_corpus()
    train, val = default_corpus("train"), default_corpus("val")
    assert len(plays) >= 30 and val and len(train) + len(val) == len(plays)
    assert {p.text for p in train}.isdisjoint(p.text for p in val)
    assert {p.text for p in train} | {p.text for p in val} == {p.text for p in plays}
    text = "".join(p.text for p in plays)
    assert "\nHAMLET:\nTo be, or not to be: that is the question:\n" in text
    assert not any(mark in text for mark in ("**", "_", "#", "\\"))
    gz = default_module.DATA_DIR / default_module.CORPUS_FILE
    assert gz.stat().st_size < 4_000_000
    assert (default_module.DATA_DIR / "SOURCES.md").is_file()
    monkeypatch.setattr(default_module, "DATA_DIR", tmp_path)
    raises_one_line(default_corpus, f"{tmp_path / default_module.CORPUS_FILE}: embedded corpus not found")
