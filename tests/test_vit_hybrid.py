"""ViT-hybrid: settings taken from timm, the 4.57 / 5.x split, and a plain ViT file refused."""

from __future__ import annotations

import math

import pytest
import torch

import converters
from converters import compat
from converters.reference import timm_data_config
from vision_port_fixtures.plugin import case_marks

pytestmark = pytest.mark.vit_hybrid  # the nightly workflow selects families by mark
CASE = converters.get("vit_hybrid_base_bit_384")
needs_vit_hybrid = pytest.mark.skipif(compat.unsupported(CASE) is not None, reason=str(compat.unsupported(CASE)))


def test_processor_follows_timm_data_config():
    data = timm_data_config(CASE.timm_tag)
    size = data["input_size"][-1]
    assert data["crop_mode"] == "center" and data["interpolation"] == "bicubic"
    assert dict(CASE.processor) == dict(
        do_resize=True,
        size={"shortest_edge": math.floor(size / data["crop_pct"])},  # timm's resize before the crop
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_normalize=True,
        image_mean=list(data["mean"]),
        image_std=list(data["std"]),
    )


def test_layer_norm_eps_is_timms():
    import timm

    with torch.device("meta"):
        model = timm.create_model(CASE.params["arch"], pretrained=False)
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {CASE.config["layer_norm_eps"]}


@pytest.mark.skipif(compat.MAJOR < 5, reason="transformers 4.x still has ViTHybrid")
def test_skipped_on_5x_with_the_last_release_named():
    reason = compat.unsupported(CASE)
    assert reason and CASE.id in reason and "4.57.6" in reason and "ViTHybrid" in reason
    skips = [m for m in case_marks(CASE) if m.name == "skip"]
    assert [m.kwargs["reason"] for m in skips] == [reason]
    assert not any(m.name == "skip" for m in case_marks(converters.get("convnextv2_atto_1k_224")))


@needs_vit_hybrid
def test_builds_on_4x_despite_its_init_bug():
    """4.57.6's `_init_weights` crashes on the None mask_token; compat builds without initialising."""
    model = compat.build_model(CASE.model_class, converters.build_config(CASE), device="meta")
    assert model.config.layer_norm_eps == 1e-6 and model.vit.embeddings.mask_token is None


@needs_vit_hybrid
def test_plain_vit_file_lists_the_missing_backbone_and_the_projection_shape():
    import timm

    with torch.device("meta"):
        plain = timm.create_model("vit_base_patch16_384", pretrained=False).state_dict()  # no ResNet stem
    _, coverage = converters.convert(CASE, plain)
    backbone = [k for k in converters.target_layout(CASE) if ".backbone." in k]
    assert coverage.missing == sorted(backbone)
    assert coverage.shape_mismatches == [("vit.embeddings.patch_embeddings.projection.weight", (768, 3, 16, 16), (768, 1024, 1, 1))]
    assert not coverage.unconsumed and not coverage.unexpected
