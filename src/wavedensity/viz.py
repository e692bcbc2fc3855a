"""Pictures of what one WDA head does: its wave masks, routing, mixed kernel and density (docs/architecture.md §1.2-1.5).

``kernel_data`` computes the tensors, ``plot_kernels`` draws them. Drawing uses matplotlib's
object API with the Agg canvas (no ``pyplot``), so it never opens a window and never changes the
caller's matplotlib backend.
"""

from pathlib import Path

import torch

from .ops import gaussian_window


def _as_prompt(input_ids) -> torch.LongTensor:
    """A single prompt ``[1, S]`` from a list of ids, a 1-D tensor or a ``[1, S]`` tensor."""
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"input_ids must be one prompt (a list, a [S] or a [1, S] tensor), got {tuple(ids.shape)}")
    return ids.unsqueeze(0)


def _check(model, ids: torch.Tensor, layer: int, head: int) -> None:
    config = model.config
    if config.mixer != "wda":
        raise ValueError(f"the model has mixer={config.mixer!r}: softmax attention has no wave masks to plot")
    for name, index, count in (("layer", layer, config.num_layers), ("head", head, config.num_heads)):
        if not 0 <= index < count:
            raise ValueError(f"{name} {index} is out of range: the model has {count} {name}s (0..{count - 1})")
    length = ids.shape[1]
    if length == 0:
        raise ValueError("the prompt is empty: the kernel at the last position needs at least one token")
    if length > config.seq_len:
        raise ValueError(f"the prompt has {length} tokens, more than the model's seq_len={config.seq_len}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= config.vocab_size:
        raise ValueError(f"prompt ids must lie in [0, {config.vocab_size}) (the vocabulary), got {low} .. {high}")


def kernel_data(model, input_ids, layer: int, head: int) -> dict:
    """The tensors behind ``plot_kernels`` (float32, CPU), for one layer and head and one prompt.

    Keys: ``masks [M, L]`` (every wave mask at distances 0..L-1, L = seq_len); ``weights [T, M]``
    (routing weights per position, T = S for ``prefix``, 1 for ``pooled`` / ``static``, where one
    row serves every position); ``kernel [L]`` and ``density [L]`` (the mixture and its density
    at the last prompt position); ``window [L]`` (the Gaussian envelope); ``prompt_len``.
    """
    ids = _as_prompt(input_ids)
    _check(model, ids, layer, head)
    mixer = model.model.layers[layer].mixer
    was_training = model.training
    model.eval()  # eval: the stochastic density variant samples only in training
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            ids = ids.to(device)
            # use_cache=False: with a cache a pooled model returns only the new positions' states.
            hidden = model(ids, output_hidden_states=True, use_cache=False).hidden_states[layer]
            length = model.config.seq_len
            masks = mixer.masks(length, torch.float32, device)[head]  # [M, L]
            weights = mixer.routing_weights(hidden)[0, head].float()  # [T, M]
            kernel = weights[-1] @ masks  # the last row is the last position's routing in every mode
            density = mixer.density_fn(torch.float32, device)(kernel)
            window = gaussian_window(length, device=device)
    finally:
        model.train(was_training)
    return dict(masks=masks.cpu(), weights=weights.cpu(), kernel=kernel.cpu(), density=density.cpu(),
                window=window.cpu(), prompt_len=ids.shape[1])


def _shade_unused(ax, prompt_len: int, length: int) -> None:
    """Distances beyond the last position reach before the prompt's start: that kernel part is unused."""
    if prompt_len < length:
        ax.axvspan(prompt_len - 0.5, length - 0.5, color="0.88", zorder=0,
                   label=f"d > {prompt_len - 1}: before the prompt (unused here)")


def plot_kernels(model, input_ids, layer: int, head: int, out_path) -> Path:
    """Write a 4-panel PNG of one WDA head on one prompt and return its path.

    (a) every wave mask M_m(d), d = 0..seq_len-1; (b) the routing-weighted mixture
    K(d) = sum_m w_m M_m(d) at the last prompt position; (c) its density Dn(d); (d) the routing
    weights over positions x masks. Raises ValueError for a softmax model, a layer or head out of
    range, an empty prompt or one longer than seq_len.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    data = kernel_data(model, input_ids, layer, head)
    config = model.config
    masks, weights = data["masks"].numpy(), data["weights"].numpy()
    num_masks, length = masks.shape
    prompt_len, last = data["prompt_len"], data["prompt_len"] - 1
    distances = range(length)
    marker = "." if length <= 32 else None  # the kernel lives on integer distances; show them when few
    chosen = [m for m in weights[-1].argsort()[::-1] if weights[-1, m] > 1e-6]

    fig = Figure(figsize=(13, 9), layout="constrained")
    FigureCanvasAgg(fig)
    ax_masks, ax_kernel, ax_density, ax_routing = fig.subplots(2, 2).flat
    wave = "sin" if config.use_sin_waves else "triangle"
    fig.suptitle(
        f"WDA layer {layer}, head {head}: routing={config.routing}, gate={config.gate}, {wave} waves, "
        f"{prompt_len}-token prompt, seq_len={length}"
    )

    if num_masks <= 20:  # tab20's 10 distinct hues first, then their light partners
        colors = [matplotlib.colormaps["tab20"]((2 * m) % 20 + (2 * m) // 20) for m in range(num_masks)]
    else:
        colors = [matplotlib.colormaps["viridis"](m / (num_masks - 1)) for m in range(num_masks)]
    for m in range(num_masks):
        ax_masks.plot(distances, masks[m], color=colors[m], lw=1.6 if m in chosen else 0.8,
                      alpha=1.0 if m in chosen else 0.45, label=f"{m}")
    ax_masks.set(title="(a) wave masks $M_m(d)$ (bold: used at the last position)", xlabel="distance d",
                 ylabel="$M_m(d)$")
    ax_masks.legend(title="mask", fontsize=7, title_fontsize=7, ncol=max(1, (num_masks + 11) // 12),
                    loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    top = ", ".join(f"{m}:{weights[-1, m]:.2f}" for m in chosen[:8]) + (" ..." if len(chosen) > 8 else "")
    _shade_unused(ax_kernel, prompt_len, length)
    ax_kernel.plot(distances, data["kernel"].numpy(), color="C0", marker=marker)
    ax_kernel.axhline(0, color="0.5", lw=0.6)
    ax_kernel.set(title=f"(b) mixture $K(d)=\\sum_m w_m M_m(d)$ at position {last}\nweights {top}",
                  xlabel="distance d", ylabel="K(d)")
    if prompt_len < length:
        ax_kernel.legend(fontsize=7, loc="upper right")

    _shade_unused(ax_density, prompt_len, length)
    ax_density.plot(distances, data["window"].numpy(), color="0.4", ls="--", lw=0.9, label="Gaussian window")
    ax_density.plot(distances, data["density"].numpy(), color="C3", marker=marker, label="Dn(d)")
    ax_density.set(title=f"(c) density $Dn(d)=\\sigma({config.attn_alpha:g}\\,K(d))\\cdot$window at position {last}",
                   xlabel="distance d", ylabel="Dn(d)", ylim=(0, 1.05))
    ax_density.legend(fontsize=7, loc="upper right")

    if weights.shape[0] == 1 and prompt_len > 1:
        # pooled / static: one row of weights serves every position; show it on every row.
        weights = weights.repeat(prompt_len, axis=0)
        note = "\none row for all positions (" + (
            "pooled: it reads the whole prompt, future included)" if config.routing == "pooled" else "static routing)")
    else:
        note = ""
    image = ax_routing.imshow(weights, aspect="auto", interpolation="nearest", cmap="magma", origin="upper",
                              extent=(-0.5, num_masks - 0.5, prompt_len - 0.5, -0.5))
    ax_routing.set(title=f"(d) routing weights $w_m$ per position{note}", xlabel="mask m", ylabel="position t")
    if num_masks <= 32:
        ax_routing.set_xticks(range(num_masks))
    else:
        ax_routing.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_routing.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_routing.tick_params(axis="x", labelsize=7)
    fig.colorbar(image, ax=ax_routing, label="weight")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    return out_path


__all__ = ["kernel_data", "plot_kernels"]
