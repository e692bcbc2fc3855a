"""Layer-local attention transfer (the first stage of LoLCATs) and branch initialisation from the
teacher's own attention weights.

Attention transfer: the teacher runs once per batch under ``no_grad`` (teacher mode), forward hooks
on each wrapped layer's teacher attention record that module's input (the normalised hidden states)
and output, and the forward stops after the last wrapped layer (no later layers, no LM head). Each
WDA branch then learns to reproduce its own layer's teacher output from the same input: the loss of
layer i is the MSE over tokens and hidden dimension between the branch's delta and the teacher
attention's output, optionally divided by the variance of that output (1.0 is then as good as
predicting its mean). Layers are independent: no gradient crosses a layer, and nothing runs
backward through the teacher.

Initialisation from the teacher (``init_from_teacher``): ``"vo"`` copies the teacher's value and
output projections into the branch's values (the first rows of ``in_proj``) / ``out_proj`` (grouped-query heads expanded to every
query head). A teacher whose head width differs from the branch's (width / heads; Gemma-3: 256 against
640 / 4) gets, per head, the best rank-``Dh`` factors of its value-to-output map ``o_h v_h`` (a truncated
SVD split evenly between the two): attention weights are scalars per token pair, so a head's output
is ``sum_s a(t, s) o_h v_h x_s`` and only that product matters; it is exact when the teacher's heads are
no wider than the branch's; ``"qk"`` copies its query/key projections into the content path's ``content_q_proj`` /
``content_k_proj`` (content rank = the teacher's head dimension; a RoPE teacher needs the branch's
``content_rope_theta`` = its base, or ``"teacher"``: each layer its teacher layer's base, Gemma-3 having
two; a teacher that normalises its queries and keys per head, Gemma-3, needs ``content_qk_norm`` and its
norms' gains are copied too; the teacher's softmax scale is folded into the queries);
``"gate"`` opens the branch's output gate (``out = q_gate * context + (1 - q_gate) * v`` with q_gate
1), so the branch outputs its attention context alone. With all three, ``content_mix`` 1 and a
``sliding_window`` of at least the sequence length the branch is exactly the teacher's attention; a
shorter window adds the linear (hedgehog) terms for older tokens, the LoLCATs branch. GPT-2's fused
``c_attn`` is split; what cannot be represented exactly is refused by name.
"""

import torch
from torch import nn

from ..layers.content import QK_NORM_EPS
from .find import TransplantError, teacher_rope_theta
from .wrapper import ParallelAttention, teacher_mode, wrappers_of

INIT_PARTS = ("vo", "qk", "gate")
GATE_OPEN_LOGIT = 30.0  # sigmoid(30) = 1 - 9e-14: the output gate passes the attention context alone


class _StopForward(Exception):
    """Raised by the hook of the last wrapped layer: the rest of the teacher is not needed."""


@torch.no_grad()
def capture_attention(model, input_ids: torch.Tensor, layers: list[int] | None = None) -> dict:
    """``{layer: (input, output)}`` of the teacher attention modules of the wrapped ``layers`` (default:
    every wrapped layer) on ``input_ids``; the teacher runs under no_grad and stops after the last one."""
    wrappers = {w.layer: w for w in wrappers_of(model)}
    layers = sorted(wrappers) if layers is None else sorted(layers)
    unknown = [i for i in layers if i not in wrappers]
    if unknown:
        raise TransplantError(f"layers {unknown} are not wrapped (wrapped: {sorted(wrappers)})")
    captured, last = {}, layers[-1]

    def hook(index):
        def record(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            captured[index] = (hidden_in.detach(), (output[0] if isinstance(output, tuple) else output).detach())
            if index == last:
                raise _StopForward
        return record

    handles = [wrappers[i].teacher.register_forward_hook(hook(i), with_kwargs=True) for i in layers]
    body = getattr(model, "base", model).base_model  # the decoder stack without the LM head
    try:
        with teacher_mode(model):
            body(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def branch_transfer_loss(wrapper: ParallelAttention, hidden_in: torch.Tensor, teacher_out: torch.Tensor,
                         normalise: bool = True) -> torch.Tensor:
    """Per-token transfer loss ``[B, S]`` of one branch: MSE over the hidden dimension between the
    branch's delta on ``hidden_in`` and ``teacher_out``, divided by ``teacher_out``'s variance when
    ``normalise``."""
    target = teacher_out.float()
    per_token = (wrapper.branch(hidden_in, None).float() - target).pow(2).mean(-1)
    if normalise:
        per_token = per_token / target.var().clamp_min(1e-12)
    return per_token


def attention_transfer_losses(model, input_ids: torch.Tensor, *, normalise: bool = True,
                              layers: list[int] | None = None) -> dict[int, torch.Tensor]:
    """The attention-transfer loss of every wrapped layer (or of ``layers``) on ``input_ids``:
    ``{layer: scalar}``, the mean over all positions of ``branch_transfer_loss``. Differentiable in
    the WDA branches only (the teacher's activations are captured under no_grad); summing the values
    and calling ``backward`` trains each branch on its own layer."""
    captured = capture_attention(model, input_ids, layers)
    wrappers = {w.layer: w for w in wrappers_of(model)}
    return {i: branch_transfer_loss(wrappers[i], x, t, normalise).mean() for i, (x, t) in captured.items()}


# ---- initialisation from the teacher's attention weights ----------------------------------------------


def _projections(teacher: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """``{q, k, v, o: (weight [out, in], bias or None)}`` of a teacher attention module."""
    if hasattr(teacher, "c_attn"):  # GPT-2: Conv1D stores [in, out]; c_attn is q, k, v side by side
        weight, bias = teacher.c_attn.weight.t(), teacher.c_attn.bias
        q, k, v = weight.chunk(3, dim=0)
        qb, kb, vb = bias.chunk(3) if bias is not None else (None, None, None)
        return {"q": (q, qb), "k": (k, kb), "v": (v, vb), "o": (teacher.c_proj.weight.t(), teacher.c_proj.bias)}
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    missing = [n for n in names.values() if not isinstance(getattr(teacher, n, None), nn.Linear)]
    if missing:
        raise TransplantError(f"{type(teacher).__name__} has no Linear {missing}: cannot initialise from it")
    return {key: (getattr(teacher, n).weight, getattr(teacher, n).bias) for key, n in names.items()}


def _expand_heads(weight: torch.Tensor, kv_heads: int, heads: int, head_dim: int) -> torch.Tensor:
    """Grouped-query rows ``[kv_heads * Dh, ...]`` repeated so that query head h reads kv head h // (H / kv)."""
    return weight.unflatten(0, (kv_heads, head_dim)).repeat_interleave(heads // kv_heads, dim=0).flatten(0, 1)


def _value_output_factors(v, vb, o, heads: int, width: int):
    """Per head h, rank-``width`` factors ``O_h [D, width]``, ``V_h [width, D]`` of the teacher's
    ``o_h v_h`` (the truncated SVD ``U S W^T`` as ``U sqrt(S)`` and ``sqrt(S) W^T``), and the value bias
    whose image ``O_h b`` is the least-squares fit of the teacher's ``o_h vb_h``. Returns the branch's
    value weight ``[H * width, D]``, value bias and output weight ``[D, H * width]``."""
    teacher_width = v.shape[0] // heads
    values, biases, outputs = [], [], []
    for h in range(heads):
        rows = slice(h * teacher_width, (h + 1) * teacher_width)
        o_h = o[:, rows].double()
        u, sv, wt = torch.linalg.svd(o_h @ v[rows].double(), full_matrices=False)
        root = sv[:width].sqrt()
        out_h = u[:, :width] * root
        values.append(root[:, None] * wt[:width])
        outputs.append(out_h)
        biases.append(torch.linalg.lstsq(out_h, (o_h @ vb[rows].double())[:, None]).solution[:, 0])
    cast = lambda parts, dim: torch.cat(parts, dim=dim).to(v.dtype)  # noqa: E731
    return cast(values, 0), cast(biases, 0), cast(outputs, 1)


def init_branches_from_teacher(model, parts: list[str]) -> None:
    """Copy the teacher's attention projections into every wrapped layer's WDA branch (``parts`` from
    ``INIT_PARTS``); a teacher whose shapes or extras the branch cannot hold is refused by name."""
    unknown = sorted(set(parts) - set(INIT_PARTS))
    if unknown:
        raise TransplantError(f"init_from_teacher {unknown}: known parts are {INIT_PARTS}")
    config = model.config.get_text_config(decoder=True)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    for wrapper in wrappers_of(model):
        mixer, teacher = wrapper.wda.mixer, wrapper.teacher
        where = f"layer {wrapper.layer} ({type(teacher).__name__})"
        head_dim = getattr(teacher, "head_dim", config.hidden_size // heads)
        if mixer.num_heads != heads:
            raise TransplantError(f"{where}: init_from_teacher needs the branch's {mixer.num_heads} heads to equal "
                                  f"the teacher's {heads}")
        proj = _projections(teacher)
        with torch.no_grad():
            if "vo" in parts:
                (v, vb), (o, ob) = proj["v"], proj["o"]
                v = _expand_heads(v, kv_heads, heads, head_dim)
                vb = v.new_zeros(v.shape[0]) if vb is None else \
                    _expand_heads(vb[:, None], kv_heads, heads, head_dim)[:, 0]
                if mixer.head_dim != head_dim:
                    v, vb, o = _value_output_factors(v, vb, o, heads, mixer.head_dim)
                # the values are the first rows of the branch's fused input projection
                values = slice(0, mixer.input_sizes["v_proj"])
                mixer.in_proj.weight[values].copy_(v)
                mixer.in_proj.bias[values].copy_(vb)
                mixer.out_proj.weight.copy_(o)
                if ob is None:
                    mixer.out_proj.bias.zero_()
                else:
                    mixer.out_proj.bias.copy_(ob)
            if "qk" in parts:
                _init_content(mixer, proj, teacher, where, heads, kv_heads, head_dim,
                              teacher_rope_theta(config, wrapper.layer))
            if "gate" in parts:  # the query modulators follow the values in the fused input projection
                gate = slice(mixer.input_sizes["v_proj"], mixer.input_sizes["v_proj"] + heads)
                mixer.in_proj.weight[gate].zero_()
                mixer.in_proj.bias[gate].fill_(GATE_OPEN_LOGIT)


def _init_content(mixer, proj, teacher, where, heads, kv_heads, head_dim, rope_theta) -> None:
    if not getattr(mixer, "learned_content", False) or not hasattr(mixer, "content_q_proj"):
        raise TransplantError(f"{where}: init_from_teacher 'qk' needs a learned content path "
                              "(wda_learned_content true, wda_content_rank > 0)")
    if mixer.content_rank != head_dim:
        raise TransplantError(f"{where}: init_from_teacher 'qk' needs wda_content_rank = the teacher's head_dim "
                              f"{head_dim}, got {mixer.content_rank}")
    norms = [getattr(teacher, name, None) for name in ("q_norm", "k_norm")]
    content = mixer.content
    if (norms[0] is None) != (norms[1] is None):
        raise TransplantError(f"{where}: the teacher normalises only its {'queries' if norms[1] is None else 'keys'} "
                              "per head; the content path's q/k norms come as a pair, so 'qk' cannot be copied")
    if norms[0] is not None and (content is None or content.q_norm_weight is None):
        raise TransplantError(f"{where}: the teacher normalises its queries/keys per head (q_norm / k_norm): set "
                              "wda_options content_qk_norm true so the content path can hold them and 'qk' be copied")
    if norms[0] is None and content is not None and content.q_norm_weight is not None:
        raise TransplantError(f"{where}: the branch normalises its queries/keys (content_qk_norm) and the teacher "
                              "does not, so copied projections would not score as the teacher's: unset content_qk_norm")
    (q, qb), (k, kb) = proj["q"], proj["k"]
    if qb is not None or kb is not None:
        raise TransplantError(f"{where}: the teacher's query/key projections have biases, which the content "
                              "path's bias-free projections cannot hold, so 'qk' cannot be copied")
    branch_theta = mixer.content.rope_theta if mixer.content is not None else 0.0
    if (rope_theta or 0.0) != branch_theta:
        raise TransplantError(f"{where}: the teacher rotates its queries/keys with RoPE base {rope_theta}, the branch's "
                              f"content path with {branch_theta or 'none'}: set wda_options content_rope_theta to "
                              f"{rope_theta or 0} so the copied projections score as the teacher's")
    # the teacher's softmax scale (Gemma-3: query_pre_attn_scalar ** -0.5) against the branch's 1 / sqrt(R),
    # folded into the queries: into their norm's scale where the teacher normalises them
    query_scale = getattr(teacher, "scaling", head_dim ** -0.5) * head_dim ** 0.5
    mixer.content_k_proj.weight.copy_(_expand_heads(k, kv_heads, heads, head_dim))
    if norms[0] is None:
        mixer.content_q_proj.weight.copy_(q * query_scale)
        return
    mixer.content_q_proj.weight.copy_(q)
    ones = torch.ones(head_dim, dtype=q.dtype, device=q.device)
    for norm, weight, scale in zip(norms, (content.q_norm_weight, content.k_norm_weight), (query_scale, 1.0)):
        if abs(getattr(norm, "eps", QK_NORM_EPS) - QK_NORM_EPS) > 1e-9:
            raise TransplantError(f"{where}: the teacher's q/k norms use eps {norm.eps}, the content path's "
                                  f"{QK_NORM_EPS}, so 'qk' cannot be copied")
        # the norm's per-channel gain whatever its convention (Gemma's 1 + w): its output on ones, whose
        # mean square is 1, times the sqrt(1 + eps) the normalisation divided by
        weight.copy_(norm(ones) * (1 + QK_NORM_EPS) ** 0.5 * scale)
