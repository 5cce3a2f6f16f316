"""The attention a recipe's `sdpa` trains with on a CPU (the device policy's choice, engine/models/device.py
training_kernels; on a GPU transformers' own sdpa is faster): PyTorch's scaled_dot_product_attention, as
transformers calls it, with changes that keep every result and cut its cost.

- A padding-free batch (all rows flattened into one sequence, `cu_seq_lens_q` marking where each starts) is
  attended row by row: rows of similar length are laid side by side, right-padded, and run causally without a
  mask, one call per group, so each row costs about its own length squared. transformers' sdpa would attend over
  the whole flattened sequence under a block-diagonal mask (the batch's total length squared); flash-attn's
  varlen kernel and PyTorch's varlen_attn, which do this, run on CUDA only. (Models with a sliding window keep
  that masked path.)
- On a CPU, attention runs in float32 under bf16/fp16 autocast: PyTorch's CPU flash kernel takes longer in bf16
  than in float32 (measured on a 2-core EPYC, rows of 64-384 tokens: 1.1-2.3x, the backward pass most).
- A right-padded batch (DPO's, the reward model's) attends causally without a padding mask (row_mask), which on
  CUDA lets sdpa run FlashAttention.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask
from transformers.utils.import_utils import is_tracing

from engine.models.device import training_kernels

ROW_SDPA = "tuneline_row_sdpa"


def training_attention(implementation: str, model=None, on: torch.device | None = None) -> str:
    """The attention implementation `model` trains with on device `on` (default: the policy's) for the recipe's
    `attn_implementation`: the row attention for sdpa where the device policy chooses it (a CPU) and the model calls
    attention through transformers' AttentionInterface (most architectures); else the implementation as named."""
    supported = model is None or getattr(model, "_supports_attention_backend", False)
    row = implementation == "sdpa" and supported and training_kernels(on).row_attention
    return ROW_SDPA if row else implementation


def row_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
             is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query (batch, heads, tokens, head_dim), key and value likewise
    with the key/value heads; returns (output (batch, tokens, heads, head_dim), None)."""
    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):  # CPU autocast would cast sdpa's inputs to bf16
            output, _ = row_sdpa(module, query.float(), key.float(), value.float(), attention_mask, dropout, scaling,
                                 is_causal, **kwargs)
        return output.to(torch.get_autocast_dtype("cpu")), None
    starts = kwargs.get("cu_seq_lens_q")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (starts is not None and query.shape[0] == 1 and causal and kwargs.get("sliding_window") is None
            and query.shape[2] == key.shape[2]):
        output = rows_attention(module, query, key, value, starts.tolist(), dropout, scaling)
    else:
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                           scaling=scaling, is_causal=is_causal, **kwargs)
    return output, None


SHORT_ROW, SIMILAR = 64, 0.8  # rows up to 64 tokens go together; longer ones with rows >= 0.8x their length


def length_groups(lengths: list[int]) -> list[list[int]]:
    """Rows (by index) in groups of similar length, longest first: each group is attended as one padded batch,
    so a row pays at most 1/0.8² = 1.6x its own attention (or a short row's), one kernel call per group."""
    groups: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        longest = lengths[groups[-1][0]] if groups else 0
        if groups and (longest <= SHORT_ROW or lengths[row] >= SIMILAR * longest):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def rows_attention(module, query, key, value, bounds: list[int], dropout: float, scaling: float | None):
    """Causal attention within each row of a flattened batch (`bounds`: where each row begins, then the total).
    Each group of similar rows is gathered into (rows, heads, longest, dim), right-padded with whatever follows
    them: under a causal mask a row's real tokens never see its padding, and the padding's outputs are dropped (so
    its gradients are zero)."""
    tokens, device = query.shape[2], query.device
    lengths = [end - start for start, end in zip(bounds, bounds[1:])]
    outputs, places = [], []
    for group in length_groups(lengths):
        longest = lengths[group[0]]
        positions = torch.arange(longest, device=device)
        index = (torch.tensor([bounds[r] for r in group], device=device)[:, None] + positions).clamp(max=tokens - 1)
        real = (positions < torch.tensor([lengths[r] for r in group], device=device)[:, None]).flatten()
        flat = index.flatten()

        def by_row(x):  # (1, heads, tokens, dim) -> (rows, heads, longest, dim)
            return x[0].index_select(1, flat).unflatten(1, (len(group), longest)).transpose(0, 1)
        output, _ = sdpa_attention_forward(module, by_row(query), by_row(key), by_row(value), None, dropout=dropout,
                                           scaling=scaling, is_causal=True)  # (rows, longest, heads, dim)
        outputs.append(output.flatten(0, 1)[real])
        places.append(flat[real])  # the flattened position of each real token, in the group's order
    order = torch.cat(places).argsort()
    return torch.cat(outputs).index_select(0, order)[None]  # (1, tokens, heads, dim), in the flattened order


def row_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
             mask_function=causal_mask_function, attention_mask: torch.Tensor | None = None,
             local_size: int | None = None, allow_is_causal_skip: bool = True, **kwargs) -> torch.Tensor | None:
    """transformers' sdpa mask, or None (plain causal attention) where right padding is all it would mask: under
    a causal mask a row's real tokens never see the padding that follows them, and the padding's outputs are
    never read (its labels are ignored), so results are unchanged. On CUDA, sdpa picks its FlashAttention kernel
    only without a mask; on a CPU its flash kernel takes as long either way (measured: rows of 512 tokens).
    (Flattened batches ignore the mask; see row_sdpa.)"""
    if (allow_is_causal_skip and mask_function is causal_mask_function and local_size is None
            and q_offset == 0 and kv_offset == 0 and attention_mask is not None and attention_mask.dim() == 2
            and q_length == kv_length == attention_mask.shape[-1] and not is_tracing(attention_mask)
            and right_padded(attention_mask)):  # a traced graph would hard-code the answer (as transformers says)
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                     local_size=local_size, allow_is_causal_skip=allow_is_causal_skip, **kwargs)


def right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row of a 2D attention mask is its tokens, then only padding (no padding before a token)."""
    real = attention_mask.bool()
    return not bool((real[:, 1:] & ~real[:, :-1]).any())


AttentionInterface.register(ROW_SDPA, row_sdpa)
AttentionMaskInterface.register(ROW_SDPA, row_mask)
