"""Text generation and chat on top of ``generate()``: loading a model with its tokenizer, sampling
settings, streaming to the terminal, and chat prompts kept within the context."""

from pathlib import Path

import torch
from transformers import TextStreamer

from .data import check_tokenizer_fits, load_tokenizer
from .models import WDAForCausalLM


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded as it is; the message names the directory and problem."""


def load_model(directory: str, release: bool = False):
    """A ``WDAForCausalLM`` from a local directory (HF format, or the release's with ``release``), in eval mode."""
    path = Path(directory)
    # Checked first: a non-existent path would otherwise be taken for a Hub repo id (and go online).
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist" if not path.exists() else f"{path} is not a directory")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a saved model directory")
    try:
        if release:
            return WDAForCausalLM.from_release(path).eval()
        # ignore_mismatched_sizes: report wrong shapes in `info` (named below), not as "see the report above".
        model, info = WDAForCausalLM.from_pretrained(path, output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as err:  # any failure to read the files is the user's to fix: report it, no traceback
        raise ModelLoadError(f"cannot load model from {path}: {type(err).__name__}: {' '.join(str(err).split())}") from err
    # from_pretrained only warns about absent or foreign weights and leaves them random; refuse instead.
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        summary = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {describe_key(sorted(v)[0])})"
                            for k, v in problems.items())
        raise ModelLoadError(f"weights in {path} do not match its config: {summary}")
    return model.eval()


def describe_key(entry) -> str:
    """A loading-info entry: a key, or ``(key, shape in the file, shape the config expects)``."""
    if isinstance(entry, tuple):
        key, found, expected = entry
        return f"{key}: {list(found)} in the file, {list(expected)} expected"
    return str(entry)


def load_model_and_tokenizer(directory):
    """A saved model directory holds both (``wda train`` writes them together)."""
    model = load_model(directory)
    tokenizer = load_tokenizer(directory)
    check_tokenizer_fits(tokenizer, model.config.vocab_size)
    return model, tokenizer


def sampling_kwargs(temperature: float, top_k: int, top_p: float, repetition_penalty: float) -> dict:
    """``generate()`` arguments; temperature 0 means greedy."""
    if temperature <= 0:
        return {"do_sample": False, "repetition_penalty": repetition_penalty}
    return {"do_sample": True, "temperature": temperature, "top_k": top_k or None, "top_p": top_p,
            "repetition_penalty": repetition_penalty}


def complete(model, tokenizer, prompt: str, max_new_tokens: int, *, stream: bool = False, seed: int = 0,
             stop_strings: list[str] | None = None, **sampling) -> str:
    """Continue ``prompt``; the prompt plus new tokens must fit in the model's context."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise ValueError("empty prompt: give at least one character")
    room = model.config.seq_len - ids.shape[1]
    if room < 1:
        raise ValueError(f"prompt of {ids.shape[1]} tokens fills the model's context of {model.config.seq_len}")
    if max_new_tokens > room:
        raise ValueError(f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens exceeds the context of "
                         f"{model.config.seq_len}; ask for at most {room}")
    torch.manual_seed(seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, streamer=streamer, stop_strings=stop_strings,
                             tokenizer=tokenizer if stop_strings else None, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def chat_prompt(turns: list[tuple[str, str]], message: str, tokenizer, budget: int) -> str:
    """The training chat format for the history plus a new user message, oldest turns dropped until
    it fits in ``budget`` tokens."""
    while True:
        text = "".join(f"User: {u}\nAssistant: {a}\n" for u, a in turns) + f"User: {message}\nAssistant:"
        if len(tokenizer(text).input_ids) <= budget or not turns:
            return text
        turns = turns[1:]
