"""Attention heads as channel units, priced exactly, and attention that runs on its kept heads.

torch-pruning cannot follow channels into attention: a packed q/k/v projection is reshaped into
(3, heads, head dim), which splits the channel dim (a barrier in `autoprune.graph.tp_graph`), and
torchvision's attention derives the head dim from the residual stream's width (`C // num_heads`)
or reshapes its output back to it, so slimming either one breaks the forward. Here the attention
modules torchvision ships are recognised by type (Swin's ShiftedWindowAttention and V2, MaxViT's
RelativePositionalMultiHeadAttention) and each gets one unit whose elements are its heads: a head
owns its q, k and v rows of the packed projection, its columns of the output projection, its
column of a relative position bias table (V2: its output of the bias MLP, its logit scale). A
masked head has q = k = v = 0, so it adds nothing after the output projection: masking equals
removing it. Slimming swaps each module's class for a subclass whose forward takes the head dim
from the module (never from the stream), so heads and the residual stream shrink independently.

The attention matmuls (q k^T, attention x v) scale with the kept heads: each attention module is
a `UnitGraph.matmuls` entry (heads, MACs per head, measured by FlopCounterMode at dense), and the
head unit's member on the module's own path tells the cost model how many heads are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
from torchvision.models.vision_transformer import VisionTransformer

from autoprune.graph.units import Member, Unit, UnitGraph, example_input, macs_counter, no_fastpath
from autoprune.models.attention import PackedAttention


@dataclass(frozen=True)
class HeadLayout:
    """Where the heads of one attention module live in its parameters."""

    path: str
    heads: int
    head_dim: int
    qkv: str  # packed projection: rows [q | k | v], each heads x head_dim
    proj: str  # output projection: columns heads x head_dim
    per_head: tuple[tuple[str, int], ...]  # free parameters with one slice per head: (path, dim)
    per_head_layers: tuple[str, ...]  # layers with one output per head (Swin V2's bias MLP)


def _layout(path: str, module: nn.Module) -> HeadLayout | None:
    if isinstance(module, ShiftedWindowAttention):
        heads = int(module.num_heads)
        dim = module.qkv.out_features // (3 * heads)
        if isinstance(module, ShiftedWindowAttentionV2):
            return HeadLayout(path, heads, dim, f"{path}.qkv", f"{path}.proj",
                              ((f"{path}.logit_scale", 0),), (f"{path}.cpb_mlp.2",))  # fmt: skip
        table = ((f"{path}.relative_position_bias_table", 1),)
        return HeadLayout(path, heads, dim, f"{path}.qkv", f"{path}.proj", table, ())
    if isinstance(module, PackedAttention):
        return HeadLayout(path, module.num_heads, module.head_dim, f"{path}.qkv",
                          f"{path}.out_proj", (), ())  # fmt: skip
    if isinstance(module, RelativePositionalMultiHeadAttention):
        table = ((f"{path}.relative_position_bias_table", 1),)
        return HeadLayout(path, int(module.n_heads), int(module.head_dim), f"{path}.to_qkv",
                          f"{path}.merge", table, ())  # fmt: skip
    return None


def head_layouts(model: nn.Module) -> list[HeadLayout]:
    """Every attention module of `model` whose heads can be units (see the module docs)."""
    found = [_layout(path, m) for path, m in model.named_modules()]
    return [lay for lay in found if lay is not None]


def attention_paths(graph: UnitGraph) -> set[str]:
    return set(graph.matmuls)


def head_units(model: nn.Module, graph: UnitGraph, layouts: list[HeadLayout]) -> list[Unit]:
    """One unit per attention module (its heads); records its matmuls and per-head parameters."""
    per_head_macs = _matmul_macs(model, graph, layouts)
    params = dict(model.named_parameters())
    units = []
    for lay in layouts:
        h, d = lay.heads, lay.head_dim
        graph.matmuls[lay.path] = (h, per_head_macs[lay.path] / h)
        width = h * d
        rows = sorted(
            (p * width + i * d + j, i) for p in range(3) for i in range(h) for j in range(d)
        )
        cols = [(i * d + j, i) for i in range(h) for j in range(d)]
        one = tuple(range(h))
        members = [
            Member(lay.qkv, "out", tuple(r for r, _ in rows), tuple(i for _, i in rows)),
            Member(lay.proj, "in", tuple(c for c, _ in cols), tuple(i for _, i in cols)),
            Member(lay.path, "out", one, one),  # the attention matmuls, per head
        ]
        members += [Member(layer, "out", one, one) for layer in lay.per_head_layers]
        for name, dim in lay.per_head:
            param = params[name]
            if name not in graph.free_params:  # torch-pruning did not list it: priced here
                graph.other_params -= param.numel()
            graph.free_params[name] = dim
            graph.norms[name] = (h, param.numel() // h)
            members.append(Member(name, "out", one, one))
        units.append(Unit(f"{lay.path}.heads", "channel", h, tuple(members)))
    return units


def _matmul_macs(model: nn.Module, graph: UnitGraph, layouts: list[HeadLayout]) -> dict[str, int]:
    """MACs of the batched matmuls inside each attention module, one sample, dense."""
    top = type(model).__name__
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), no_fastpath(), macs_counter() as counter:
            model(example_input(graph.input_size))
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    out = {}
    for lay in layouts:
        ops = counts.get(f"{top}.{lay.path}", {})
        # bmm: q k^T and attention x v; scaled-dot-product kernels (macs_counter gives the CPU
        # kernel the formula torch has for the others)
        matmul = [n for op, n in ops.items() if "bmm" in str(op) or "dot_product" in str(op)]
        out[lay.path] = sum(matmul) // 2
    return out


# --- attention that runs on the heads it keeps ----------------------------------------------
def slim_attention(model: nn.Module, path: str) -> None:
    """Give the attention module at `path` a forward that runs on whatever heads and stream
    width it has (in place, before its layers are cut; `count_heads` after)."""
    module: Any = model.get_submodule(path)
    if type(module) in _SLIM.values():
        return  # slimmed before, or runs on any width already
    slim_type = _SLIM.get(type(module))
    lay = _layout(path, module)
    if slim_type is None or lay is None:
        raise NotImplementedError(f"cannot slim {type(module).__name__} attention")
    module.__class__ = slim_type
    module.head_dim = lay.head_dim


def width_holders(model: nn.Module) -> list[str]:
    """Modules that keep the residual stream's width as an attribute: torchvision's
    VisionTransformer reshapes its patch embedding to `hidden_dim` channels."""
    return [path for path, m in model.named_modules() if isinstance(m, VisionTransformer)]


def count_widths(model: nn.Module) -> None:
    """Set the width attributes of `width_holders` from their slimmed layers."""
    for path in width_holders(model):
        vit: Any = model.get_submodule(path)
        vit.hidden_dim = vit.conv_proj.out_channels


def count_heads(model: nn.Module, path: str) -> None:
    """Set the head count of a slimmed attention module from its cut q/k/v projection."""
    module: Any = model.get_submodule(path)
    if isinstance(module, RelativePositionalMultiHeadAttention):
        module.n_heads = module.to_qkv.out_features // (3 * module.head_dim)
    else:
        module.num_heads = module.qkv.out_features // (3 * module.head_dim)


def _window_attention(mod: Any, x: Tensor, logit_scale: Tensor | None) -> Tensor:
    """Swin's (shifted) window attention with the head dim of the module, not of the stream."""
    b, h, w, _ = x.shape
    wh, ww = mod.window_size
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    ph, pw = x.shape[1], x.shape[2]
    shift = [
        s if size > win else 0
        for s, size, win in zip(mod.shift_size, (ph, pw), (wh, ww), strict=True)
    ]
    if sum(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nh, nw, n = ph // wh, pw // ww, wh * ww
    tokens = x.view(b, nh, wh, nw, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, n, -1)
    bias = mod.qkv.bias
    if logit_scale is not None and bias is not None:  # V2 has no key bias
        third = bias.numel() // 3
        bias = torch.cat(
            [bias[:third], torch.zeros_like(bias[third : 2 * third]), bias[2 * third :]]
        )
    heads, dim = mod.num_heads, mod.head_dim
    qkv = F.linear(tokens, mod.qkv.weight, bias).reshape(-1, n, 3, heads, dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is None:
        attn = (q * dim**-0.5) @ k.transpose(-2, -1)
    else:  # cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    attn = attn + mod.get_relative_position_bias()
    if sum(shift):
        mask = _shift_mask((ph, pw), (wh, ww), shift, attn)
        attn = (attn.view(b, nh * nw, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    attn = F.dropout(attn.softmax(-1), p=mod.attention_dropout, training=mod.training)
    y = F.linear((attn @ v).transpose(1, 2).reshape(-1, n, heads * dim), mod.proj.weight,
                 mod.proj.bias)  # fmt: skip
    y = F.dropout(y, p=mod.dropout, training=mod.training)
    y = y.view(b, nh, nw, wh, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, -1)
    if sum(shift):
        y = torch.roll(y, shifts=(shift[0], shift[1]), dims=(1, 2))
    return y[:, :h, :w, :].contiguous()


def _shift_mask(padded: tuple[int, int], window: tuple[int, int], shift: list[int],
                like: Tensor) -> Tensor:  # fmt: skip
    """-100 between tokens of one window that came from different regions before the roll."""
    labels = []
    for size, win, s in zip(padded, window, shift, strict=True):
        band = torch.zeros(size, dtype=torch.long, device=like.device)
        band[size - win :] = 1
        band[size - s :] = 2
        labels.append(band)
    region = labels[0][:, None] * 3 + labels[1][None, :]
    (ph, pw), (wh, ww) = padded, window
    region = region.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    differs = region[:, None, :] != region[:, :, None]
    return torch.where(differs, -100.0, 0.0).to(like.dtype)


class SlimShiftedWindowAttention(ShiftedWindowAttention):
    """ShiftedWindowAttention on `num_heads` heads of `head_dim` (set by `slim_attention`)."""

    head_dim: int

    def forward(self, x: Tensor) -> Tensor:
        return _window_attention(self, x, None)


class SlimShiftedWindowAttentionV2(ShiftedWindowAttentionV2):
    head_dim: int

    def forward(self, x: Tensor) -> Tensor:
        return _window_attention(self, x, self.logit_scale)


class SlimRelativeAttention(RelativePositionalMultiHeadAttention):
    """MaxViT's attention whose output is heads x head_dim wide, whatever the stream's width."""

    def forward(self, x: Tensor) -> Tensor:
        b, g, p, _ = x.shape
        heads, dim = self.n_heads, self.head_dim
        parts = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, g, p, heads, dim).transpose(2, 3) for t in parts)
        attn = q @ (k * self.scale_factor).transpose(-2, -1)
        attn = F.softmax(attn + self.get_relative_positional_bias(), dim=-1)
        return self.merge((attn @ v).transpose(2, 3).reshape(b, g, p, heads * dim))


_SLIM: dict[type, type] = {
    ShiftedWindowAttention: SlimShiftedWindowAttention,
    ShiftedWindowAttentionV2: SlimShiftedWindowAttentionV2,
    RelativePositionalMultiHeadAttention: SlimRelativeAttention,
    PackedAttention: PackedAttention,  # already reads its heads and width from the module
}
