"""Swin: the original layout against the original code, the buffers the plan rebuilds against an
implementation we did not write, and the original evaluation's two rules."""

from __future__ import annotations

import pytest
import torch

import converters
from converters.families import swin

pytestmark = pytest.mark.swin  # the nightly workflow selects families by mark

TINY, BASE_384 = converters.get("swin_tiny_patch4_window7_224"), converters.get("swin_base_patch4_window12_384")


def test_original_layout_has_the_original_models_keys():
    """Counted from microsoft/Swin-Transformer models/swin_transformer.py (HEAD f82860b) built with
    each config: keys, their order, shapes and the computed buffers were equal to the declared
    layout (tiny 190 keys, 17 of them buffers; small and base 364, 35)."""
    counts = {c.id: len(converters.original_layout(c)) for c in converters.cases("swin")}
    assert counts == {"swin_tiny_patch4_window7_224": 190, "swin_small_patch4_window7_224": 364,
                      "swin_base_patch4_window7_224": 364, "swin_base_patch4_window12_384": 364}
    layout = converters.original_layout(TINY)
    # the shifted blocks: odd blocks of the stages whose map is larger than a window (56, 28, 14 > 7)
    assert sorted(k for k in layout if k.endswith("attn_mask")) == [
        "layers.0.blocks.1.attn_mask", "layers.1.blocks.1.attn_mask", "layers.2.blocks.1.attn_mask",
        "layers.2.blocks.3.attn_mask", "layers.2.blocks.5.attn_mask"]
    assert tuple(layout["layers.0.downsample.reduction.weight"].shape) == (192, 384)  # at the end of stage 0
    assert "layers.3.downsample.reduction.weight" not in layout


@pytest.mark.parametrize("case", [TINY, BASE_384], ids=lambda c: c.id)
def test_rebuilt_buffers_equal_timms_own(case):
    """The plan drops relative_position_index (transformers 5) and attn_mask and rebuilds them on
    the way back: they must equal what timm computes for the same geometry (timm does not save them)."""
    layout = converters.original_layout(case)
    theirs = dict(converters.oracle(case, converters.synthetic_original(case)).named_buffers())  # timm's model
    buffers = [k for k, v in layout.items() if not v.is_meta]
    assert buffers and all(k in theirs for k in buffers), sorted(set(buffers) - set(theirs))
    for key in buffers:
        assert torch.equal(layout[key].to(theirs[key].dtype), theirs[key]), key
    masks = [k for k in buffers if k.endswith("attn_mask")]
    assert all(set(layout[k].unique().tolist()) == {0.0, -100.0} for k in masks)


def test_the_original_evaluation_crops_at_224_and_warps_at_384():
    """data/build.py: int(256 / 224 * 224) = 256 then a 224 crop (TEST.CROP True, the default);
    the 384 configs set TEST.CROP False. timm's Swin configs crop at 0.9 instead."""
    tiny, base = swin.evaluation(TINY), swin.evaluation(BASE_384)
    assert tiny.resize == int(256 / 224 * 224) == 256 and not tiny.warp and tiny.crop_size == 224
    assert base.warp and base.resize == (384, 384)
