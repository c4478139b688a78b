"""Swin V2: the original layout against the original code, the buffers the plan rebuilds against an
implementation we did not write, the pre-training windows of the 22K -> 1K files, and the original
evaluation's two rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import converters
from converters.families import swinv2

pytestmark = pytest.mark.swinv2  # the nightly workflow selects families by mark

TINY = converters.get("swinv2_tiny_patch4_window8_256")
FINE_TUNED_256 = converters.get("swinv2_base_patch4_window12to16_192to256_22kto1k_ft")


def test_original_layout_has_the_original_models_keys():
    """Counted from microsoft/Swin-Transformer models/swin_transformer_v2.py (HEAD f82860b) built with
    each config (configs/swinv2/*.yaml): keys, their order, shapes and the computed buffers (bit for
    bit) were equal to the declared layout for all twelve cases (tiny window 8: 250 keys, 29 of them
    buffers; tiny window 16: 247, 26; small and base window 8: 484, 59; every other: 475, 50)."""
    counts = {c.id: len(converters.original_layout(c)) for c in converters.cases("swinv2")}
    assert counts == {c.id: 250 if c.id == TINY.id else 247 if c.id == "swinv2_tiny_patch4_window16_256"
                      else 484 if "window8_" in c.id else 475 for c in converters.cases("swinv2")}
    layout = converters.original_layout(TINY)
    # the shifted blocks: odd blocks of the stages whose map is larger than a window (64, 32, 16 > 8)
    assert sorted(k for k in layout if k.endswith("attn_mask")) == [
        "layers.0.blocks.1.attn_mask", "layers.1.blocks.1.attn_mask", "layers.2.blocks.1.attn_mask",
        "layers.2.blocks.3.attn_mask", "layers.2.blocks.5.attn_mask"]
    # V2 normalises after the reduction: the norm has the reduced width (V1: the concatenated 4C)
    assert tuple(layout["layers.0.downsample.norm.weight"].shape) == (192,)
    assert "attn.qkv.bias" not in " ".join(layout) and tuple(layout["layers.0.blocks.0.attn.q_bias"].shape) == (96,)


@pytest.mark.parametrize("case", [TINY, FINE_TUNED_256], ids=lambda c: c.id)
def test_rebuilt_buffers_equal_timms_own(case):
    """The plan drops relative_coords_table, relative_position_index and attn_mask and rebuilds them
    on the way back: they must equal what timm computes for the same geometry (it does not save them)."""
    # the buffers depend on the geometry only: one channel per head keeps timm's model small
    case = dataclasses.replace(case, config={**case.config, "embed_dim": case.config["num_heads"][0]})
    layout = converters.original_layout(case)
    theirs = dict(converters.oracle(case, converters.synthetic_original(case)).named_buffers())  # timm's model
    buffers = {k: v for k, v in layout.items() if not v.is_meta}
    assert {k.rsplit(".", 1)[-1] for k in buffers} == {"relative_coords_table", "relative_position_index", "attn_mask"}
    for key, mine in buffers.items():
        timm_key = key.replace(".downsample", "")  # no buffer sits under a downsampling
        assert timm_key in theirs, key
        assert torch.equal(mine.to(theirs[timm_key].dtype), theirs[timm_key]), key


def test_pretrained_windows_change_the_coordinates_table():
    """The 22K -> 1K files were fine-tuned from 192 px windows of 12 (6 in the last stage): their
    table divides the offsets by 11 (5), not by the window less one; a plain file's by its own window."""
    stage0 = FINE_TUNED_256.config["pretrained_window_sizes"]
    assert stage0 == [12, 12, 12, 6] and converters.get("swinv2_tiny_patch4_window16_256").config["pretrained_window_sizes"] == [0] * 4
    fine, plain = swinv2.relative_coords_table(16, 12), swinv2.relative_coords_table(16, 0)
    assert fine.shape == plain.shape == (1, 31, 31, 2)
    assert fine[0, -1, -1, 0].item() == pytest.approx(torch.log2(torch.tensor(8 * 15 / 11 + 1)).item() / 3)
    assert plain[0, -1, -1, 0].item() == pytest.approx(torch.log2(torch.tensor(9.0)).item() / 3)  # the edge maps to 8
    # the last stage's map (8) clips the window 16 to 8; the pre-training window there was 6
    last = converters.original_layout(FINE_TUNED_256)["layers.3.blocks.0.attn.relative_coords_table"]
    assert torch.equal(last, swinv2.relative_coords_table(8, 6))


def test_the_original_evaluation_crops_below_384_and_warps_at_384():
    """data/build.py: int(256 / 224 * IMG_SIZE) then an IMG_SIZE crop (TEST.CROP True, the default);
    the *_192to384_* configs set TEST.CROP False. timm's Swin V2 configs crop at 0.9 instead."""
    tiny, pre = swinv2.evaluation(TINY), swinv2.evaluation(converters.get("swinv2_base_patch4_window12_192_22k"))
    assert tiny.resize == int(256 / 224 * 256) == 292 and not tiny.warp and tiny.crop_size == 256
    assert pre.resize == int(256 / 224 * 192) == 219 and pre.crop_size == 192
    big = swinv2.evaluation(converters.get("swinv2_large_patch4_window12to24_192to384_22kto1k_ft"))
    assert big.warp and big.resize == (384, 384)


SWIN_V1 = converters.get("swin_tiny_patch4_window7_224")


@pytest.mark.parametrize("case, other", [(TINY, SWIN_V1), (SWIN_V1, TINY)], ids=["v1_file_to_v2", "v2_file_to_v1"])
def test_a_swin_file_of_the_other_version_is_one_error_naming_what_it_is(case, other):
    """V1 and V2 share most key names and shapes (patch embedding, norms, MLPs, projections, head):
    143 of a tiny file's tensors are both versions'. Most of the file is then the case's layout, yet
    all of it is the other version's: refused at load, naming the case, the file and the match."""
    from converters import CheckpointError, diagnose

    path = f"/checkpoints/{other.id}.pth"
    with pytest.raises(CheckpointError) as info:
        diagnose.check_file(case, path, converters.original_layout(other))  # keys and shapes: all it reads
    message = str(info.value)
    assert message.startswith(f"{case.id}: {path}: not {case.id}'s original layout"), message
    assert f"the file is exactly the layout of {other.id} (family {other.family}, every key and shape alike)" in message, message
    assert "143 of its" in message, message


def test_the_cases_own_file_with_a_few_keys_off_still_loads():
    """A file that is the case's layout but for its head (fine-tuned to 10 classes) is no other
    known case's: it loads, and the key coverage check names the head."""
    from converters import diagnose

    state = dict(converters.original_layout(TINY))
    state["head.weight"], state["head.bias"] = torch.empty(10, 768, device="meta"), torch.empty(10, device="meta")
    diagnose.check_file(TINY, "/checkpoints/fine_tuned.pth", state)  # no error


def test_the_22k_files_name_their_21841_classes():
    """The ImageNet-22K files' head has 21841 classes: the configuration names them from timm's
    ImageNet-22K label set, which timm's Swin V2 22K models use (transformers' conversion took
    huggingface/label-files imagenet-22k-id2label.json: not compared here, no hub); other class
    counts stay unnamed."""
    from converters import core

    config = core.build_config(converters.get("swinv2_base_patch4_window12_192_22k"))
    assert len(config.id2label) == 21841 and config.id2label[0] == "organism, being" and config.id2label[21840] == "knothole"
    other = dataclasses.replace(TINY, config={**TINY.config, "num_labels": 21843})
    assert core.build_config(other).id2label[0] == "LABEL_0"
