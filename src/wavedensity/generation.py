"""Text generation and chat on top of ``generate()``: loading a model with its tokenizer, sampling
settings, streaming to the terminal, and chat prompts kept within the context."""

from pathlib import Path

import torch
from transformers import TextStreamer

from .data import load_tokenizer
from .models import WDAForCausalLM


def load_model_and_tokenizer(directory):
    """A saved model directory holds both (``wda train`` writes them together)."""
    directory = Path(directory)
    model = WDAForCausalLM.from_pretrained(directory).eval()
    tokenizer = load_tokenizer(directory)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"{directory}: tokenizer has {len(tokenizer)} tokens, the model only {model.config.vocab_size}")
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
    streamer = TextStreamer(tokenizer, skip_prompt=True) if stream else None
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, streamer=streamer, stop_strings=stop_strings,
                             tokenizer=tokenizer if stop_strings else None,
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
