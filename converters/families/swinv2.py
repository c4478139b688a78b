"""Swin Transformer V2 (microsoft/Swin-Transformer) -> Swinv2ForImageClassification.

Original files are `{"model": state_dict}` (models/swin_transformer_v2.py, `SwinTransformerV2`, APE off):

    patch_embed.{proj (patch 4), norm}, layers.{i}.blocks.{j}.{attn_mask (buffer, shifted blocks only),
    norm1, attn.{logit_scale, q_bias, v_bias, relative_coords_table (buffer), relative_position_index
    (buffer), cpb_mlp.{0,2} (the continuous position bias MLP), qkv (fused q, k, v weight, no bias),
    proj}, norm2, mlp.fc1, mlp.fc2}, layers.{i}.downsample.{reduction, norm} at the END of stage i (not
    the last; its norm after the reduction), norm, head

The key has no bias (the original adds zeros between q_bias and v_bias). transformers names the
attention BERT-style (`attention.self.{query,key,value}`, `attention.output.dense`) on both lines and
recomputes all three buffers; the 22K -> 1K fine-tuned files' coordinates table is scaled by the
pre-training windows (`pretrained_window_sizes`), which the configuration carries. The oracle is
timm's Swin V2 through timm's own `checkpoint_filter_fn`, which moves the downsampling to the start of
the next stage, renames `head.` to `head.fc.` and drops the three buffers.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .. import vit_blocks, windows
from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Drop, Plan, Rename

# size -> (embed dim, depths, heads), from the original configs (configs/swinv2/*.yaml)
SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
PATCH = 4
BASE_URL = "https://github.com/SwinTransformer/storage/releases/download/v2.0.0"
FINE_TUNED = (12, 12, 12, 6)  # PRETRAINED_WINDOW_SIZES of the *_22kto1k_ft configs: the 192 px pre-training's windows
# (file stem, size, window, image size, pre-training windows, classes, TEST.CROP, timm tag of the same
# weights): the README's "ImageNet-1K and ImageNet-22K Pretrained Swin-V2 Models" table and each
# file's config (configs/swinv2/<stem>.yaml). transformers' convert_swinv2_timm_to_pytorch.py converted
# timm's models of these files; all twelve are on the Hub as microsoft/<stem with dashes>.
PUBLISHED = (
    ("swinv2_tiny_patch4_window8_256", "tiny", 8, 256, None, 1000, True, "swinv2_tiny_window8_256.ms_in1k"),
    ("swinv2_tiny_patch4_window16_256", "tiny", 16, 256, None, 1000, True, "swinv2_tiny_window16_256.ms_in1k"),
    ("swinv2_small_patch4_window8_256", "small", 8, 256, None, 1000, True, "swinv2_small_window8_256.ms_in1k"),
    ("swinv2_small_patch4_window16_256", "small", 16, 256, None, 1000, True, "swinv2_small_window16_256.ms_in1k"),
    ("swinv2_base_patch4_window8_256", "base", 8, 256, None, 1000, True, "swinv2_base_window8_256.ms_in1k"),
    ("swinv2_base_patch4_window16_256", "base", 16, 256, None, 1000, True, "swinv2_base_window16_256.ms_in1k"),
    ("swinv2_base_patch4_window12_192_22k", "base", 12, 192, None, 21841, True, "swinv2_base_window12_192.ms_in22k"),
    ("swinv2_base_patch4_window12to16_192to256_22kto1k_ft", "base", 16, 256, FINE_TUNED, 1000, True,
     "swinv2_base_window12to16_192to256.ms_in22k_ft_in1k"),
    ("swinv2_base_patch4_window12to24_192to384_22kto1k_ft", "base", 24, 384, FINE_TUNED, 1000, False,
     "swinv2_base_window12to24_192to384.ms_in22k_ft_in1k"),
    ("swinv2_large_patch4_window12_192_22k", "large", 12, 192, None, 21841, True, "swinv2_large_window12_192.ms_in22k"),
    ("swinv2_large_patch4_window12to16_192to256_22kto1k_ft", "large", 16, 256, FINE_TUNED, 1000, True,
     "swinv2_large_window12to16_192to256.ms_in22k_ft_in1k"),
    ("swinv2_large_patch4_window12to24_192to384_22kto1k_ft", "large", 24, 384, FINE_TUNED, 1000, False,
     "swinv2_large_window12to24_192to384.ms_in22k_ft_in1k"),
)

# Measured on every test image, transformers 5.25 and 4.57.6 (the pixel check's figures).
CROP_OFFSET = (
    "data/build.py centre-crops 219 -> 192 at torchvision's offset round(13.5) = 14 (half to even), every "
    "transformers processor at (219 - 192) // 2 = 13 and none can be configured to 14: one row (portrait: column) "
    "shifted, max abs diff 4.11 on the test images (synthetic 640x480 3.83, 480x640 4.08, 500x333 4.03)"
)

PROVENANCE = Provenance(
    # microsoft/Swin-Transformer LICENSE (HEAD f82860b): "MIT License, Copyright (c) Microsoft Corporation.";
    # models/swin_transformer_v2.py: "Licensed under The MIT License"; the README links the V2 weights
    # (SwinTransformer/storage releases v2.0.0) and states no other terms for them.
    licence="mit",
    licence_statement="The Swin Transformer V2 code and its released weights are under the MIT License (the "
                      "repository's LICENSE; its README states no separate terms for the weights).",
    licence_source="microsoft/Swin-Transformer LICENSE and README.md (ImageNet-1K and ImageNet-22K Pretrained "
                   "Swin-V2 Models)",
    repository="https://github.com/microsoft/Swin-Transformer",
    papers={"2111.09883": "Swin Transformer V2: Scaling Up Capacity and Resolution"},
    datasets=("imagenet-1k",),
)


def _case(stem: str, size: str, window: int, image: int, pretrained, classes: int, crop: bool, tag: str) -> Case:
    dim, depths, heads = SIZES[size]
    hub = stem.replace("_", "-")
    leftover = int(256 / 224 * image) - image  # the crop's margin: 4k+3 makes half-even rounding and floor disagree
    return Case(
        id=stem,
        family="swinv2",
        hub_name=hub,
        published_repo=f"microsoft/{hub}",  # transformers' own Swinv2 conversion published them there
        url=f"{BASE_URL}/{stem}.pth",
        timm_tag=tag,
        config_class="Swinv2Config",
        config=dict(image_size=image, patch_size=PATCH, embed_dim=dim, depths=list(depths), num_heads=list(heads),
                    window_size=window, pretrained_window_sizes=list(pretrained or (0, 0, 0, 0)), mlp_ratio=4.0,
                    qkv_bias=True, layer_norm_eps=1e-5, num_labels=classes),
        model_class="Swinv2ForImageClassification",
        output="logits",
        # The original evaluation (`evaluation` below): ConvNeXt's processor resizes the short side
        # to int(size / 0.875) and centre-crops below 384, and warps to a square from 384 up.
        processor_class="ConvNextImageProcessor",
        processor=dict(do_resize=True, size={"shortest_edge": image}, crop_pct=224 / 256, resample=3,  # PIL bicubic
                       do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                       do_convert_rgb=True),
        # measured on random weights against timm: 9.5e-7 (tiny window 8, the default run's case,
        # transformers 5.25 and 4.57.6); at real size on 5.25 0 (tiny window 16, base 22k 192, base
        # 22kto1k 256, also 0 on 4.57.6) and 8.3e-7 (base 22kto1k 384)
        atol=5e-6,
        params=dict(size=size, test_crop=crop),
        pixel_divergence=CROP_OFFSET if crop and leftover % 4 == 3 else None,
        provenance={"datasets": ("imagenet-21k",)} if classes != 1000 else
        {"datasets": ("imagenet-21k", "imagenet-1k")} if pretrained else {},
    )


CASES = tuple(_case(*published) for published in PUBLISHED)


def evaluation(case: Case) -> Evaluation:
    """microsoft/Swin-Transformer data/build.py build_transform(is_train=False): with TEST.CROP (the
    default, config.py) the short side to int(256 / 224 * IMG_SIZE), bicubic (DATA.INTERPOLATION),
    centre crop IMG_SIZE; the 384 fine-tuning configs (configs/swinv2/*_192to384_22kto1k_ft.yaml) set
    TEST.CROP False: a square warp, no crop. ImageNet mean/std."""
    source = f"microsoft/Swin-Transformer data/build.py build_transform(is_train=False), configs/swinv2/{case.id}.yaml"
    common = dict(crop_size=case.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic")
    if case.params["test_crop"]:
        return Evaluation(source=source + " (TEST.CROP True)", crop_pct=224 / 256, **common)
    return Evaluation(source=source + " (TEST.CROP False)", warp=True, **common)


# --------------------------------------------------------------------------- buffers


def relative_coords_table(window: int, pretrained: int) -> torch.Tensor:
    """The original WindowAttention's `relative_coords_table`: (1, 2w-1, 2w-1, 2) relative offsets
    divided by the pre-training window less one (else the window's), scaled to [-8, 8] and
    log-spaced: sign(x) log2(|x| + 1) / log2(8). Computed in the original's float32 order."""
    return _relative_coords_table(window, pretrained).clone()  # every block holds one: computed once


@lru_cache(maxsize=None)
def _relative_coords_table(window: int, pretrained: int) -> torch.Tensor:
    offsets = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij")).permute(1, 2, 0).contiguous().unsqueeze(0)
    table /= (pretrained if pretrained > 0 else window) - 1
    table *= 8
    return torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)


# --------------------------------------------------------------------------- plan


def plan(case: Case) -> Plan:
    c = case.config
    block, layer = "layers.{i}.blocks.{j}.", "swinv2.encoder.layers.{i}.blocks.{j}."
    geometry = {i: w for i, _, _, w, _ in windows.stages(c)}
    index, mask = windows.buffer_drops(c, block)
    coords = Drop(block + "attn.relative_coords_table", restore=lambda g, state: relative_coords_table(
        geometry[int(g["i"])], c["pretrained_window_sizes"][int(g["i"])]))
    attention = layer + "attention.self."
    return Plan(
        renames=(
            Rename("patch_embed.proj.", "swinv2.embeddings.patch_embeddings.projection."),
            Rename("patch_embed.norm.", "swinv2.embeddings.norm."),
            Rename(block + "attn.logit_scale", attention + "logit_scale"),
            Rename(block + "attn.q_bias", attention + "query.bias"),
            Rename(block + "attn.v_bias", attention + "value.bias"),
            Rename(block + "attn.cpb_mlp.", attention + "continuous_position_bias_mlp."),
            *vit_blocks.attention(block, layer, inner="self"),
            *vit_blocks.bert_block(block, layer),
            Rename("layers.{i}.downsample.", "swinv2.encoder.layers.{i}.downsample."),
            Rename("norm.", "swinv2.layernorm."),
            Rename("head.", "classifier."),
        ),
        ops=(*vit_blocks.split_qkv(block, entries=("weight",)), coords, index, mask),
    )


# --------------------------------------------------------------------------- original layout


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The original SwinTransformerV2's state dict, key for key: meta tensors, except the buffers the
    original computes (relative_coords_table, relative_position_index, attn_mask), which are real;
    the downsampling normalises the reduced 2C."""
    c = case.config

    def attention(p: str, stage: int, width: int, window: int) -> dict:
        heads = c["num_heads"][stage]
        return {p + "logit_scale": (heads, 1, 1), p + "q_bias": (width,), p + "v_bias": (width,),
                p + "relative_coords_table": relative_coords_table(window, c["pretrained_window_sizes"][stage]),
                p + "relative_position_index": windows.relative_position_index(window),
                p + "cpb_mlp.0.weight": (512, 2), p + "cpb_mlp.0.bias": (512,), p + "cpb_mlp.2.weight": (heads, 512),
                p + "qkv.weight": (3 * width, width), p + "proj.weight": (width, width), p + "proj.bias": (width,)}

    return windows.layout(c, attention, merged_norm=2)


# --------------------------------------------------------------------------- oracle


def oracle(case: Case, original):
    """timm's Swin V2 for the case's geometry, loaded through timm's own `checkpoint_filter_fn`."""
    from timm.models.swin_transformer_v2 import checkpoint_filter_fn

    from ..reference import timm_model

    c = case.config
    return timm_model("swinv2_tiny_window8_256", original, checkpoint_filter_fn,
                      img_size=c["image_size"], patch_size=c["patch_size"], window_size=c["window_size"],
                      embed_dim=c["embed_dim"], depths=tuple(c["depths"]), num_heads=tuple(c["num_heads"]),
                      pretrained_window_sizes=tuple(c["pretrained_window_sizes"]),
                      mlp_ratio=c.get("mlp_ratio", 4.0), num_classes=c["num_labels"])


def configurations(case: Case, tiny: bool):
    """Two or more stages (timm's filter tells an original file by its stage-0 downsampling), depths,
    heads x head size per stage (the width doubles each stage), patch, classes, pre-training windows
    (0: none, else >= 2: the original divides by the window less one) and a window that tiles every
    stage's map: the last map is one or two windows, or half a window (then clipped to the map, as the
    original does at 256 px with window 16)."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        stages = draw(st.integers(2, 3 if tiny else 4))
        half = draw(st.integers(1, 2 if tiny else 6))
        window = 2 * half
        last = draw(st.sampled_from([half, window, 2 * window])) if half > 1 else draw(st.sampled_from([window, 2 * window]))
        patch = draw(st.sampled_from([1, 2, 4] if tiny else [2, 4, 8]))
        head = draw(st.integers(1, 4 if tiny else 32))
        per = draw(st.integers(1, 2 if tiny else 4))
        heads = [per * 2**i for i in range(stages)]
        pretrained = [draw(st.sampled_from([0, 2, 3, 6, 12])) for _ in range(stages)]
        return {"depths": [draw(st.integers(1, 2 if tiny else 4)) for _ in range(stages)], "num_heads": heads,
                "embed_dim": heads[0] * head, "window_size": window, "patch_size": patch,
                "pretrained_window_sizes": pretrained, "image_size": patch * last * 2 ** (stages - 1),
                "num_labels": draw(st.integers(1, 16 if tiny else 2000))}

    return config()


FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    unwrap=("model",),
    # four stages, a shifted block in each but the last (whose map is one window), 3 downsamplings;
    # pre-training windows as the 22K -> 1K files have them (the coordinates table then differs)
    mutants=(Small("swinv2_tiny_patch4_window8_256", {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4],
                                                      "window_size": 2, "pretrained_window_sizes": [3, 3, 3, 2],
                                                      "image_size": 64, "num_labels": 32}),),
)
