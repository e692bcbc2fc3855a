"""Cross-entropy of a linear output layer without materialising all the logits.

With a 50k vocabulary the logits of a 4 x 256 batch are 206 MB in float32, and log-softmax, its
backward and the logits' gradient each add as much. ``linear_cross_entropy`` walks the tokens in
chunks: per chunk it computes the logits, the loss and, when gradients are needed, the gradients of
the hidden states and of the weight (``softmax - onehot`` times the weight and the hidden states),
then drops the logits. The matmul work equals the plain path's (one forward, two backward products);
peak memory is one chunk's logits. ``linear_cross_entropy_reference`` is the plain computation.
"""

import torch
import torch.nn.functional as F


def logits_cross_entropy(logits, labels, ignore_index: int = -100, num_items=None):
    """Cross-entropy summed over tokens whose label is not ``ignore_index``, divided by ``num_items``
    (default: the number of such tokens), in at least float32. logits ``[N, V]``, labels ``[N]``."""
    total = F.cross_entropy(logits.to(loss_dtype(logits.dtype)), labels, ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum() if num_items is None else num_items
    return total / count


def linear_cross_entropy_reference(hidden, weight, labels, ignore_index: int = -100, num_items=None):
    """The plain computation: all logits ``hidden @ weight.T`` at once, then ``logits_cross_entropy``."""
    return logits_cross_entropy(hidden @ weight.T, labels, ignore_index, num_items)


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """Losses run in at least float32 (bf16 logits lose the small differences that matter)."""
    return torch.promote_types(dtype, torch.float32)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, num_items, chunk_size):
        wants_grad = hidden.requires_grad or weight.requires_grad
        count = (labels != ignore_index).sum() if num_items is None else torch.as_tensor(num_items)
        dtype = loss_dtype(hidden.dtype)
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if wants_grad else None
        grad_weight = torch.zeros_like(weight, dtype=dtype) if wants_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[start : start + chunk_size], labels[start : start + chunk_size]
            logits = (h @ weight.T).to(dtype)
            valid = y != ignore_index
            target = y.clamp(min=0).unsqueeze(1)
            log_norm = torch.logsumexp(logits, dim=1)
            total += ((log_norm - logits.gather(1, target).squeeze(1)) * valid).sum()
            if wants_grad:
                # d loss / d logits = softmax - onehot (0 on ignored tokens), before the division by count
                grad_logits = torch.exp(logits - log_norm.unsqueeze(1))
                grad_logits.scatter_add_(1, target, torch.full_like(target, -1, dtype=grad_logits.dtype))
                grad_logits *= valid.unsqueeze(1)
                grad_logits = grad_logits.to(h.dtype)
                grad_hidden[start : start + chunk_size] = grad_logits @ weight.to(h.dtype)
                grad_weight += grad_logits.T @ h
        count = count.to(total.device, dtype)
        if wants_grad:
            ctx.save_for_backward(grad_hidden, grad_weight, count)
            ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_loss / count
        return (grad_hidden * scale.to(grad_hidden.dtype), (grad_weight * scale).to(ctx.weight_dtype),
                None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = -100, num_items=None, chunk_size: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of ``hidden [N, D] @ weight[V, D].T`` against ``labels [N]``, chunk by chunk.

    Equals ``linear_cross_entropy_reference`` (outputs and gradients). The gradients are computed in
    the forward pass, so call it only where ``backward`` follows (training); elsewhere without grad it
    costs one matmul like the plain path.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1] or weight.shape[1:] != hidden.shape[1:]:
        raise ValueError(f"need hidden [N, D], weight [V, D], labels [N]; got {list(hidden.shape)}, "
                         f"{list(weight.shape)}, {list(labels.shape)}")
    return _LinearCrossEntropy.apply(hidden, weight, labels, ignore_index, num_items, chunk_size)
