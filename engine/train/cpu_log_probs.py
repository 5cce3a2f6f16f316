"""Per-token log-probabilities of `hidden @ weight.T` for TRL's fused LM head on a CPU, in a few whole-row passes.

TRL's fused head (trl.trainer.utils.add_fused_lm_head) computes them with ChunkedLogProbFunction: Triton kernels on
a GPU, and on other devices the same online-logsumexp algorithm as torch ops on each tile, about a dozen float32
passes over the (tokens, vocabulary) logits forward and backward, and float32 gradient matmuls. No library computes
these statistics in fewer passes on a CPU, so this does by hand what that function does, with the same signature
and outputs: per token chunk, the logits in the autocast dtype (as TRL's tiles), ATen's logsumexp in float32, the
target's log-probability; the backward recomputes the chunk and forms the logits' gradient softmax - one-hot in two
passes, its matmuls in the autocast dtype accumulated in float32 (oneDNN's bf16 GEMM), as TRL's tiles are rounded
to that dtype too. Measured on the bench (engine's LM head share of an SFT step on a 2-core EPYC): see README.
"""

from __future__ import annotations

import torch

OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")  # TRL's optional outputs, in its order
CHUNK_ELEMENTS = 2 ** 24  # tokens per chunk x vocabulary: a 64 MB float32 chunk of logits at a time


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


def scaled_logits(hidden, weight, bias, compute_dtype, logit_scale: float, softcap: float | None,
                  inv_t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z, tanh term or None): the logits as TRL's head transforms them (scale, softcap, temperature), in float32."""
    logits = torch.nn.functional.linear(hidden.to(compute_dtype), weight.to(compute_dtype),
                                        None if bias is None else bias.to(compute_dtype)).float()
    if logit_scale != 1.0:
        logits = logits * logit_scale
    t = None
    if softcap is not None:
        t = torch.tanh(logits / softcap)
        logits = softcap * t
    return (logits * inv_t if inv_t != 1.0 else logits), t


class CpuLogProbs(torch.autograd.Function):
    """trl.kernels.ChunkedLogProbFunction's contract (forward arguments and the five outputs) for CPU tensors."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                logit_scale=1.0, outputs=OUTPUTS):
        ctx.set_materialize_grads(False)
        compute_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
        args = (compute_dtype, logit_scale, final_logit_softcapping, 1 / temperature)
        n, vocab = hidden.shape[0], weight.shape[0]
        log_z = torch.empty(n, dtype=torch.float32)
        target_z = torch.empty(n, dtype=torch.float32)
        wanted = {name: torch.empty(n, dtype=torch.float32) for name in OUTPUTS if name in outputs}
        with torch.autocast("cpu", enabled=False):
            for start in range(0, n, chunk_rows(vocab)):
                rows = slice(start, min(n, start + chunk_rows(vocab)))
                z, _ = scaled_logits(hidden[rows], weight, bias, *args)
                lse = torch.logsumexp(z, -1)
                log_z[rows], target_z[rows] = lse, z.gather(-1, targets[rows, None]).squeeze(-1)
                if "mean_logits" in wanted:
                    wanted["mean_logits"][rows] = z.mean(-1)
                if "is_top1" in wanted:  # argmax takes the first maximum: a tie with an earlier token is not top-1
                    wanted["is_top1"][rows] = (z.argmax(-1) == targets[rows]).float()
                if "entropy" in wanted or "log_sum_sq_probs" in wanted:
                    log_p = z.sub_(lse[:, None])  # z is not needed past here
                    if "entropy" in wanted:
                        wanted["entropy"][rows] = -(log_p.exp() * log_p).sum(-1)
                    if "log_sum_sq_probs" in wanted:
                        wanted["log_sum_sq_probs"][rows] = torch.logsumexp(2 * log_p, -1)
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, wanted.get("entropy", log_z))
        ctx.args = args
        result = [target_z - log_z, wanted.get("entropy")]
        result += [wanted.get("log_sum_sq_probs"), wanted.get("mean_logits"),
                   wanted["is_top1"].bool() if "is_top1" in wanted else None]
        ctx.mark_non_differentiable(*(x for x in result[2:] if x is not None))
        return tuple(result)

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, *_):
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        compute_dtype, logit_scale, softcap, inv_t = ctx.args
        wants_hidden, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32) if wants_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if wants_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32) if wants_bias else None
        n, vocab = hidden.shape[0], weight.shape[0]
        with torch.autocast("cpu", enabled=False):
            w = weight.to(compute_dtype)
            for start in range(0, n, chunk_rows(vocab)):
                rows = slice(start, min(n, start + chunk_rows(vocab)))
                z, t = scaled_logits(hidden[rows], weight, bias, *ctx.args)
                log_p = z.sub_(log_z[rows, None])
                p = log_p.exp()
                grad = torch.zeros_like(p)
                if grad_entropy is not None:  # d(entropy)/dz_j = -p_j (log p_j + entropy)
                    grad -= grad_entropy[rows, None].float() * p * (log_p + entropy[rows, None])
                if grad_log_probs is not None:  # d(log p_target)/dz_j = 1[j = target] - p_j
                    g = grad_log_probs[rows].float()
                    grad.sub_(p.mul_(g[:, None]))
                    grad.scatter_add_(-1, targets[rows, None], g[:, None])
                grad = grad * (inv_t * logit_scale) if inv_t * logit_scale != 1.0 else grad
                if t is not None:
                    grad.mul_(1 - t * t)
                grad = grad.to(compute_dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = (grad @ w).float()
                if grad_weight is not None:
                    grad_weight += (grad.t() @ hidden[rows].to(compute_dtype)).float()
                if grad_bias is not None:
                    grad_bias += grad.sum(0, dtype=torch.float32)
        return (None if grad_hidden is None else grad_hidden.to(hidden.dtype),
                None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None, None, None, None, None)


def log_probs_for(trl_function):
    """TRL's log-prob function with CPU tensors sent to CpuLogProbs (same `apply` signature)."""
    class Dispatch:
        @staticmethod
        def apply(hidden, *args):
            return (CpuLogProbs if hidden.device.type == "cpu" else trl_function).apply(hidden, *args)
    return Dispatch
