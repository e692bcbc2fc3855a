"""Teacher against student: the run modes, loss/perplexity/bits per byte, and the swap-check
(per-token top-1 agreement and KL of the teacher-free student against the teacher)."""

import torch
import torch.nn.functional as F

from ..eval import evaluate
from ..eval.metrics import batched_windows
from ..progress import progress_bar
from .adapter import is_release_payload, load_adapter, load_teacher, read_adapter, transplant_model
from .config import TransplantConfig
from .find import TransplantError
from .wrapper import set_mixing, teacher_mode

MODES = ("teacher", "wda", "mixed")


def set_mode(model, mode: str, alpha: float = 1.0, gamma_override: float | None = None) -> None:
    """``teacher``: the untouched teacher (alpha 0). ``wda``: teacher-free, the WDA branches alone
    (teacher scale 0). ``mixed``: teacher and WDA mixed with ``alpha`` (teacher scale 1)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if mode == "teacher":
        set_mixing(model, alpha=0.0, teacher_scale=1.0, wda_scale=1.0)
    else:
        if alpha <= 0:
            raise ValueError(f"mode {mode} needs alpha > 0, got {alpha} (alpha 0 is the teacher)")
        set_mixing(model, alpha=alpha, teacher_scale=0.0 if mode == "wda" else 1.0, wda_scale=1.0,
                   gamma_override=gamma_override)


def load_student(config: TransplantConfig, adapter):
    """The config's teacher with the adapter's WDA branches loaded (base model checked): (model, tokenizer)."""
    from ..train.trainer import resolve_device

    meta = None if is_release_payload(adapter) else read_adapter(adapter)[0]  # checked before the teacher loads
    teacher, tokenizer = load_teacher(config.teacher_model_id, config.torch_dtype, resolve_device(config.device))
    if meta is None:  # a release payload has no metadata of its own: the config's layers and settings
        from .find import decoder_layers, select_layers

        layers = select_layers(config.wda_layers, len(decoder_layers(teacher)[1]))
        meta = {"layers": layers, "wda": config.wda_settings(), "init_gamma": config.init_gamma,
                "alpha_layer_scale": config.alpha_layer_scale}
    model = transplant_model(teacher, config.teacher_model_id, meta["layers"], meta["wda"], meta["init_gamma"],
                             meta["alpha_layer_scale"])
    load_adapter(model, adapter)
    return model.eval(), tokenizer


def load_saved_transplant(directory):
    """A saved transplanted model (``save_pretrained``, or the hub directory of ``wda transplant export``)
    with the tokenizer beside it, in our own classes (no remote code runs): (model, tokenizer). It runs
    with the mixing it was saved with."""
    from transformers import AutoTokenizer

    from .model import WDATransplantForCausalLM

    try:
        model, info = WDATransplantForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                               output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as err:  # unreadable files, a missing tokenizer: the directory is what is wrong
        raise TransplantError(f"cannot load the transplanted model in {directory} ({type(err).__name__}: "
                              f"{' '.join(str(err).split())})") from err
    # from_pretrained only warns about absent or foreign weights and leaves them random; refuse instead
    problems = {key: sorted(map(str, names)) for key, names in info.items()
                if names and key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise TransplantError(f"weights in {directory} do not match its config: " + "; ".join(
            f"{len(names)} {key.replace('_', ' ')} (e.g. {names[0]})" for key, names in problems.items()))
    return model.eval(), tokenizer


def validation_windows(config: TransplantConfig, tokenizer) -> list:
    """The config's validation data (its held-out split, as in training) as evaluation windows."""
    from ..data import eval_blocks
    from ..train.trainer import prepare_data

    _, _, val_corpus = prepare_data(config.train_config(), tokenizer)
    return list(eval_blocks(val_corpus, config.seq_len))


def text_windows(source: str, tokenizer, window: int = 256, max_tokens: int | None = None) -> list:
    """Non-overlapping ``window``-token windows over every document of ``source`` (a text file, folder or
    JSONL/JSON: whatever ``wda train`` reads, chat rows included), each token predicted once; with
    ``max_tokens``, the windows up to the first that reaches that many predicted tokens."""
    from ..data import eval_blocks, read_examples, tokenize_examples

    windows = list(eval_blocks(tokenize_examples(list(read_examples(source)), tokenizer), window))
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {max_tokens}")
        kept, total = [], 0
        for item in windows:
            if total >= max_tokens:
                break
            kept.append(item)
            total += int((item[1] != -100).sum())
        windows = kept
    return windows


def compare_losses(model, windows, alpha: float = 1.0, max_windows: int | None = None, progress: bool = False) -> dict:
    """Loss, perplexity and bits per byte of the teacher, the teacher-free student and the mixed model."""
    report = {}
    for mode in MODES:
        set_mode(model, mode, alpha)
        report[{"wda": "teacher_free"}.get(mode, mode)] = evaluate(model, windows, max_windows=max_windows,
                                                                   progress=progress, desc=f"eval {mode}")
    return report


@torch.no_grad()
def swap_check(model, windows, alpha: float = 1.0, max_windows: int | None = None, batch_size: int = 16,
               progress: bool = False) -> dict:
    """How well the teacher-free student stands in for the teacher on held-out tokens: the fraction of
    positions whose top-1 token agrees, and the mean KL(teacher || student) per token (nats)."""
    agree, kl_total, tokens = 0, 0.0, 0
    device = next(model.parameters()).device
    batches = list(batched_windows(windows, batch_size, max_windows))
    for input_ids, labels, _ in progress_bar(batches, show=progress, desc="swap-check", unit="batch", leave=False):
        input_ids, mask = input_ids.to(device), (labels != -100).to(device)
        with teacher_mode(model):
            teacher = model(input_ids, use_cache=False).logits.float()
        set_mode(model, "wda", alpha)
        student = model(input_ids, use_cache=False).logits.float()
        agree += int(((teacher.argmax(-1) == student.argmax(-1)) & mask).sum())
        log_t, log_s = F.log_softmax(teacher, -1), F.log_softmax(student, -1)
        kl_total += float(((log_t.exp() * (log_t - log_s)).sum(-1) * mask).sum())
        tokens += int(mask.sum())
    if tokens == 0:
        raise ValueError("nothing to compare: the evaluation data produced no predicted tokens")
    return {"tokens": tokens, "top1_agreement": agree / tokens, "kl_per_token": kl_total / tokens}
