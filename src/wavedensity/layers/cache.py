"""Incremental decoding state for WDA models, as a ``transformers`` ``Cache``.

Each layer keeps what the next token needs and nothing it can recompute:

- ``routing_sum [B, 2 H G]``: running sum of the routing MLPs' input projections (``prefix``
  routing reads their mean, the projection of the mean of the layer input);
- ``u [B, H, seq_len, 1 + Dh]``: the modulated values ``[km, km * v]`` of every earlier position, which
  the next position's kernel is applied to, in a buffer allocated once for the whole context
  (``append``: a decoding step writes one row instead of copying all earlier ones);
- ``content_kv [B, H, R, Dh]``, ``content_k_sum [B, H, R]``: the content path's linear-attention state;
- ``keys``, ``values`` (softmax baseline only);
- ``pooled_inputs [B, P, D]`` (layer 0 of a ``pooled`` model only): ``pooled`` routing is not
  causal, every new token changes all earlier hidden states, so the model re-runs the window from
  the stored embeddings; the cache only saves re-embedding.
"""

import torch
from transformers.cache_utils import Cache


def _owns_its_storage(t: torch.Tensor) -> bool:
    return t.untyped_storage().nbytes() <= t.numel() * t.element_size()


class WDALayerState:
    """One layer's decoding state: named batch-first tensors, tensors that do not depend on the batch
    (``constants``: the rendered wave masks, and for one-token steps the masks and window laid out by
    position, untouched by beam reordering), and the positions seen."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.constants: dict[str, torch.Tensor] = {}
        self.length = 0

    @property
    def is_initialized(self) -> bool:
        return self.length > 0

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    def set(self, **tensors: torch.Tensor) -> None:
        """Store ``tensors``, each in storage of its own size: a layer often hands over a slice (the last
        ``w`` keys of a prefill, a convolution's last inputs) or a view of a larger projection, and keeping
        the view would keep that whole tensor alive for as long as the cache lives."""
        self.tensors.update({name: t if _owns_its_storage(t) else t.clone(memory_format=torch.contiguous_format)
                             for name, t in tensors.items()})

    def append(self, name: str, new: torch.Tensor, capacity: int) -> torch.Tensor:
        """Write ``new [B, ..., T, C]`` at positions ``length .. length+T-1`` of the buffer ``name`` (room for
        ``capacity`` positions, allocated on first use) and return the view of positions ``0 .. length+T-1``."""
        start, stop = self.length, self.length + new.shape[-2]
        buffer = self.tensors.get(name)
        if torch.is_grad_enabled() and new.requires_grad:
            # Writing in place would invalidate the graphs of earlier steps: concatenate as autograd sees it.
            joined = new if buffer is None else torch.cat([buffer[..., :start, :], new], dim=-2)
            self.tensors[name] = joined
            return joined
        if buffer is None or buffer.shape[-2] < stop or buffer.requires_grad:
            # zeros, not empty: the pages are touched once here, not one fault per row per decoding step
            grown = new.new_zeros(*new.shape[:-2], max(capacity, stop), new.shape[-1])
            if buffer is not None:
                grown[..., :start, :] = buffer[..., :start, :]
            buffer = self.tensors[name] = grown
        buffer[..., start:stop, :] = new
        return buffer[..., :stop, :]

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def reset(self) -> None:
        self.tensors.clear()
        self.constants.clear()
        self.length = 0

    def _map(self, fn) -> None:
        self.tensors = {name: fn(t) for name, t in self.tensors.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError("a WDA cache holds running sums and cannot be cropped")



class WDACache(Cache):
    """Decoding cache of a ``WDAForCausalLM``: one ``WDALayerState`` per decoder layer."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[WDALayerState() for _ in range(num_layers)])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0
