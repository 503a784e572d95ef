"""nn.MultiheadAttention with its packed q/k/v projection as an nn.Linear: the same math, prunable.

nn.MultiheadAttention keeps its q/k/v projection as a bare parameter (`in_proj_weight`) applied
inside one functional call, and needs q, k and v exactly `embed_dim` wide: no layer the cost
model prices, and nothing a slimmed model could run. `pack_attention` swaps every plain
self-attention instance of a model for `PackedAttention`, which computes the same thing (the
same two linear layers and scaled-dot-product attention, so FlopCounterMode counts the same
MACs) with `qkv` an ordinary nn.Linear and the head count and width read from the module, so
`autoprune.graph.attention` can make its heads units and the residual stream prunable. State
dicts keep nn.MultiheadAttention's names both ways (pretrained weights load unchanged).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_RENAMED = (("in_proj_weight", "qkv.weight"), ("in_proj_bias", "qkv.bias"))


class PackedAttention(nn.Module):
    """Multi-head self-attention of `num_heads` heads of `head_dim`, q/k/v packed in `qkv`."""

    # nn.TransformerEncoderLayer runs a fused kernel on the original module's parameters unless
    # told otherwise; this keeps it on the module's own forward
    _qkv_same_embed_dim = False

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.num_heads, self.head_dim = mha.num_heads, mha.head_dim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        width = mha.embed_dim
        self.qkv = nn.Linear(width, 3 * width, bias=mha.in_proj_bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(mha.in_proj_weight)
            if mha.in_proj_bias is not None:
                self.qkv.bias.copy_(mha.in_proj_bias)
        self.qkv.to(mha.in_proj_weight.device)
        self.out_proj = mha.out_proj
        self._register_load_state_dict_pre_hook(_from_mha_names)
        self._register_state_dict_hook(_to_mha_names)

    @property
    def in_proj_weight(self) -> Tensor:
        return self.qkv.weight

    @property
    def in_proj_bias(self) -> Tensor | None:
        return self.qkv.bias

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        plain = query is key is value and key_padding_mask is None and attn_mask is None
        if not plain or need_weights or query.dim() != 3:
            return self._as_mha(query, key, value, key_padding_mask, need_weights, attn_mask,
                                average_attn_weights, is_causal)  # fmt: skip
        x = query if self.batch_first else query.transpose(0, 1)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=is_causal)
        y = self.out_proj(y.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        return (y if self.batch_first else y.transpose(0, 1)), None

    def _as_mha(self, query: Tensor, key: Tensor, value: Tensor, *rest: Any) -> Any:
        """Anything but plain self-attention: nn.MultiheadAttention's own function (dense)."""
        padding, need, mask, average, causal = rest
        if self.batch_first and query.dim() == 3:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        y, w = F.multi_head_attention_forward(
            query, key, value, self.num_heads * self.head_dim, self.num_heads, self.qkv.weight,
            self.qkv.bias, None, None, False, self.dropout, self.out_proj.weight,
            self.out_proj.bias, training=self.training, key_padding_mask=padding,
            need_weights=need, attn_mask=mask, average_attn_weights=average, is_causal=causal,
        )  # fmt: skip
        return (y.transpose(0, 1) if self.batch_first and y.dim() == 3 else y), w


def _from_mha_names(state: dict[str, Any], prefix: str, *_: Any) -> None:
    for old, new in _RENAMED:
        if prefix + old in state:
            state[prefix + new] = state.pop(prefix + old)


def _to_mha_names(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    for old, new in _RENAMED:
        if prefix + new in state:
            state[prefix + old] = state.pop(prefix + new)


def packable(mha: nn.Module) -> bool:
    """Plain multi-head attention: one packed projection, no extra key/value biases."""
    return (
        type(mha) is nn.MultiheadAttention
        and mha._qkv_same_embed_dim
        and mha.bias_k is None
        and mha.bias_v is None
        and not mha.add_zero_attn
    )


def pack_attention(model: nn.Module) -> nn.Module:
    """Swap every packable nn.MultiheadAttention of `model` for a `PackedAttention` (in place)."""
    for path, module in list(model.named_modules()):
        if packable(module):
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent), name, PackedAttention(module))
    return model
