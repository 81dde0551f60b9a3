"""``torch.nn.MultiheadAttention`` -> the same attention written with three ``nn.Linear`` projections.

ONNX Runtime 1.19 cannot build the gradient of what ``nn.MultiheadAttention`` exports to, and its packed
``in_proj_weight`` is not a linear layer the LBP rewrite can find. ``replace_multihead_attention`` swaps every such
module of a copy of the model for :class:`LinearAttention`, which holds the same weights (``q_proj``, ``k_proj``,
``v_proj``, ``out_proj``) and computes the same function with plain products and a softmax.
"""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class LinearAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (same arguments and outputs) over separate q/k/v linear layers."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("MultiheadAttention with add_bias_kv or add_zero_attn cannot be rewritten for export")
        self.num_heads, self.dropout, self.batch_first = mha.num_heads, mha.dropout, mha.batch_first
        dim = mha.embed_dim
        bias = mha.in_proj_bias is not None
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(mha.kdim, dim, bias=bias)
        self.v_proj = nn.Linear(mha.vdim, dim, bias=bias)
        with torch.no_grad():
            if mha.in_proj_weight is not None:  # one packed projection (query, key and value of one width)
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            biases = mha.in_proj_bias.chunk(3) if bias else (None,) * 3
            for proj, weight, b in zip((self.q_proj, self.k_proj, self.v_proj), weights, biases):
                proj.weight.copy_(weight)
                if b is not None:
                    proj.bias.copy_(b)
        self.out_proj = nn.Linear(dim, dim, bias=mha.out_proj.bias is not None)
        self.out_proj.load_state_dict(mha.out_proj.state_dict())

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # (N, B, C) -> (B, N, C)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, n_q, dim = query.shape
        heads, head_dim = self.num_heads, dim // self.num_heads

        def split(x):
            return x.reshape(batch, -1, heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(n_q, k.shape[2], dtype=torch.bool, device=q.device).triu(1)
        for mask in (attn_mask, None if key_padding_mask is None else key_padding_mask[:, None, None, :]):
            if mask is None:
                continue
            if mask.dim() == 3:  # (B * heads, N, S), as nn.MultiheadAttention takes it
                mask = mask.reshape(batch, heads, *mask.shape[1:])
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(batch, n_q, dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def replace_multihead_attention(model: nn.Module):
    """(model, count): ``model`` itself when it has no ``nn.MultiheadAttention``, else a copy with every one
    replaced by :class:`LinearAttention` (the caller's model is never changed)."""
    found = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if not found:
        return model, 0
    model = copy.deepcopy(model)
    for name in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LinearAttention(getattr(parent, child)))
    return model, len(found)
