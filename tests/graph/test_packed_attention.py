"""PackedAttention computes what nn.MultiheadAttention computes, under its parameter names."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autoprune.models import build_model
from autoprune.models.attention import PackedAttention, pack_attention

GEN = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_is_the_same_math(batch_first: bool) -> None:
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    packed = PackedAttention(copy.deepcopy(mha)).eval()
    x = torch.randn(3, 5, 16, generator=GEN)
    with torch.no_grad():
        want, got = mha(x, x, x, need_weights=False)[0], packed(x, x, x, need_weights=False)[0]
        assert torch.allclose(got, want, atol=1e-6)
        # anything else (weights asked for, a mask, cross-attention) is the module's own function
        y = torch.randn(3, 5, 16, generator=GEN)
        length = 5 if batch_first else 3
        mask = torch.rand(length, length, generator=GEN) > 0.5
        for args, kw in (((x, x, x), {}), ((x, y, y), {}), ((x, x, x), {"attn_mask": mask})):
            a, b = mha(*args, **kw), packed(*args, **kw)
            assert torch.allclose(b[0], a[0], atol=1e-6)


def test_state_dicts_keep_the_multihead_names_both_ways() -> None:
    mha_model = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
    packed = pack_attention(copy.deepcopy(mha_model))
    assert isinstance(packed[0], PackedAttention)
    assert set(packed.state_dict()) == set(mha_model.state_dict())
    fresh = pack_attention(nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True)))
    fresh.load_state_dict(mha_model.state_dict())
    assert torch.equal(fresh[0].qkv.weight, mha_model[0].in_proj_weight)
    mha_model.load_state_dict(packed.state_dict())


def test_attention_with_extra_key_biases_is_left_alone() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    assert isinstance(pack_attention(model)[0], nn.MultiheadAttention)


def test_build_model_packs_torchvision_vit() -> None:
    vit = build_model("vit_b_32", num_classes=10)
    attn = vit.get_submodule("encoder.layers.encoder_layer_0.self_attention")
    assert isinstance(attn, PackedAttention) and attn.num_heads == 12
