"""Swin Transformer (microsoft/Swin-Transformer) -> SwinForImageClassification.

Original files are `{"model": state_dict}` (models/swin_transformer.py, `SwinTransformer`, APE off):

    patch_embed.{proj (patch 4), norm}, layers.{i}.blocks.{j}.{norm1, attn.relative_position_bias_table,
    attn.relative_position_index (buffer), attn.qkv (fused q, k, v), attn.proj, norm2, mlp.fc1, mlp.fc2,
    attn_mask (buffer, shifted blocks only)}, layers.{i}.downsample.{reduction, norm} at the END of
    stage i (not the last), norm, head

transformers keeps the downsampling where the original has it. Its names differ between lines:
4.57 holds the attention as `attention.self.{query,key,value}` with the bias table and the index
buffer beside them and the MLP as `intermediate.dense` / `output.dense`; 5.x as
`attention.{q,k,v,o}_proj`, the table under `attention.relative_position_bias.`, no index in its
state, and `mlp.fc1` / `mlp.fc2` (`Plan.by_line`). Both recompute the shifted windows' mask.
The oracle is timm's Swin through timm's own `checkpoint_filter_fn`, which moves the downsampling
to the start of the next stage, renames `head.` to `head.fc.` and drops both buffers.
"""

from __future__ import annotations

import torch

from .. import vit_blocks, windows
from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Line, Plan, Rename

# size -> (embed dim, depths, heads), from the original configs (configs/swin/*.yaml)
SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
PATCH = 4
BASE_URL = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0"
# (size, window, image size, file, timm tag of the same weights): the README's "ImageNet-1K and
# ImageNet-22K Pretrained Swin-V1 Models" table. The base cases are the 22K -> 1K fine-tuned files:
# what transformers' conversion published as microsoft/swin-base-* (its script converted timm's
# `swin_base_*`, whose pretrained URL was the _22kto1k file then).
PUBLISHED = (
    ("tiny", 7, 224, "swin_tiny_patch4_window7_224.pth", "swin_tiny_patch4_window7_224.ms_in1k"),
    ("small", 7, 224, "swin_small_patch4_window7_224.pth", "swin_small_patch4_window7_224.ms_in1k"),
    ("base", 7, 224, "swin_base_patch4_window7_224_22kto1k.pth", "swin_base_patch4_window7_224.ms_in22k_ft_in1k"),
    ("base", 12, 384, "swin_base_patch4_window12_384_22kto1k.pth", "swin_base_patch4_window12_384.ms_in22k_ft_in1k"),
)

PROVENANCE = Provenance(
    # microsoft/Swin-Transformer LICENSE (HEAD f82860b): "MIT License, Copyright (c) Microsoft Corporation.";
    # its README links the weights (SwinTransformer/storage releases) and states no other terms for them.
    licence="mit",
    licence_statement="The Swin Transformer code and its released weights are under the MIT License (the "
                      "repository's LICENSE; its README states no separate terms for the weights).",
    licence_source="microsoft/Swin-Transformer LICENSE and README.md (Main Results on ImageNet with Pretrained Models)",
    repository="https://github.com/microsoft/Swin-Transformer",
    papers={"2103.14030": "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"},
    datasets=("imagenet-1k",),
)


def _case(size: str, window: int, image: int, file: str, tag: str) -> Case:
    dim, depths, heads = SIZES[size]
    name = f"swin_{size}_patch{PATCH}_window{window}_{image}"
    hub = name.replace("_", "-")
    in22k = "22kto1k" in file
    return Case(
        id=name,
        family="swin",
        hub_name=hub,
        published_repo=f"microsoft/{hub}",  # transformers' own Swin conversion published them there
        url=f"{BASE_URL}/{file}",
        timm_tag=tag,
        config_class="SwinConfig",
        config=dict(image_size=image, patch_size=PATCH, embed_dim=dim, depths=list(depths), num_heads=list(heads),
                    window_size=window, mlp_ratio=4.0, qkv_bias=True, layer_norm_eps=1e-5, num_labels=1000),
        model_class="SwinForImageClassification",
        output="logits",
        # The original evaluation (`evaluation` below): ConvNeXt's processor resizes the short side
        # to int(224 / 0.875) = 256 and centre-crops below 384, and warps to a square from 384 up.
        processor_class="ConvNextImageProcessor",
        processor=dict(do_resize=True, size={"shortest_edge": image}, crop_pct=224 / 256, resample=3,  # PIL bicubic
                       do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                       do_convert_rgb=True),
        # measured on random weights, every case, transformers 5.25 and 4.57.6: logits within
        # 0.95e-6 to 1.3e-6 of timm's
        atol=5e-6,
        params=dict(size=size),
        provenance={"datasets": ("imagenet-21k", "imagenet-1k")} if in22k else {},
    )


CASES = tuple(_case(*published) for published in PUBLISHED)


def evaluation(case: Case) -> Evaluation:
    """microsoft/Swin-Transformer data/build.py build_transform(is_train=False): with TEST.CROP (the
    default, config.py) the short side to int(256 / 224 * IMG_SIZE), bicubic (DATA.INTERPOLATION),
    centre crop IMG_SIZE; the 384 fine-tuning configs (configs/swin/*_384_*.yaml) set TEST.CROP
    False: a square warp, no crop. ImageNet mean/std."""
    source = "microsoft/Swin-Transformer data/build.py build_transform(is_train=False)"
    common = dict(crop_size=case.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic")
    if case.image_size >= 384:
        return Evaluation(source=source + " with TEST.CROP False (configs/swin/*_384_*.yaml)", warp=True, **common)
    return Evaluation(source=source + " with TEST.CROP True", crop_pct=224 / 256, **common)


# --------------------------------------------------------------------------- plan


def plan(case: Case) -> Plan:
    c = case.config
    block, layer = "layers.{i}.blocks.{j}.", "swin.encoder.layers.{i}.blocks.{j}."
    index, mask = windows.buffer_drops(c, block)
    table = block + "attn.relative_position_bias_table"
    return Plan(
        renames=(
            Rename("patch_embed.proj.", "swin.embeddings.patch_embeddings.projection."),
            Rename("patch_embed.norm.", "swin.embeddings.norm."),
            Rename(block + "norm1.", layer + "layernorm_before."),
            Rename(block + "norm2.", layer + "layernorm_after."),
            Rename("layers.{i}.downsample.", "swin.encoder.layers.{i}.downsample."),
            Rename("norm.", "swin.layernorm."),
            Rename("head.", "classifier."),
        ),
        ops=(*vit_blocks.split_qkv(block), mask),
        by_line={
            5: Line(renames=(*vit_blocks.projections(block, layer),
                             Rename(table, layer + "attention.relative_position_bias.relative_position_bias_table"),
                             Rename(block + "mlp.", layer + "mlp.")),
                    ops=(index,)),
            4: Line(renames=(*vit_blocks.attention(block, layer, inner="self"),
                             Rename(table, layer + "attention.self.relative_position_bias_table"),
                             Rename(block + "attn.relative_position_index", layer + "attention.self.relative_position_index"),
                             Rename(block + "mlp.fc1.", layer + "intermediate.dense."),
                             Rename(block + "mlp.fc2.", layer + "output.dense."))),
        },
    )


# --------------------------------------------------------------------------- original layout


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The original SwinTransformer's state dict, key for key: meta tensors, except the buffers the
    original computes (relative_position_index, attn_mask), which are real; the downsampling
    normalises the concatenated 4C before the reduction."""
    c = case.config

    def attention(p: str, stage: int, width: int, window: int) -> dict:
        return {p + "relative_position_bias_table": ((2 * window - 1) ** 2, c["num_heads"][stage]),
                p + "relative_position_index": windows.relative_position_index(window),
                p + "qkv.weight": (3 * width, width), p + "qkv.bias": (3 * width,),
                p + "proj.weight": (width, width), p + "proj.bias": (width,)}

    return windows.layout(c, attention, merged_norm=4)


# --------------------------------------------------------------------------- oracle


def oracle(case: Case, original):
    """timm's Swin for the case's geometry, loaded through timm's own `checkpoint_filter_fn`."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    from ..reference import timm_model

    c = case.config
    return timm_model(f"swin_{case.params['size']}_patch4_window7_224", original, checkpoint_filter_fn,
                      img_size=c["image_size"], patch_size=c["patch_size"], window_size=c["window_size"],
                      embed_dim=c["embed_dim"], depths=tuple(c["depths"]), num_heads=tuple(c["num_heads"]),
                      mlp_ratio=c.get("mlp_ratio", 4.0), num_classes=c["num_labels"])


def configurations(case: Case, tiny: bool):
    """Any number of stages and depths, heads x head size per stage (the width doubles each stage),
    window, patch and classes. The last stage's map is a whole number (>= 1) of windows and every
    earlier one twice the next, so no window is clipped: the original then sizes its bias tables by
    the clipped window, transformers by the configured one (a layout transformers cannot hold)."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        stages = draw(st.integers(1, 3 if tiny else 4))
        window = draw(st.integers(1, 3 if tiny else 12))
        last = window * draw(st.integers(1, 2))
        patch = draw(st.sampled_from([1, 2, 4] if tiny else [2, 4, 8]))
        head = draw(st.integers(1, 4 if tiny else 32))
        per = draw(st.integers(1, 2 if tiny else 4))
        heads = [per * 2**i for i in range(stages)]
        return {"depths": [draw(st.integers(1, 2 if tiny else 4)) for _ in range(stages)], "num_heads": heads,
                "embed_dim": heads[0] * head, "window_size": window, "patch_size": patch,
                "image_size": patch * last * 2 ** (stages - 1), "num_labels": draw(st.integers(1, 16 if tiny else 2000))}

    return config()


FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    unwrap=("model",),
    # four stages, a shifted block in each but the last (whose map is one window), 2 downsamplings
    mutants=(Small("swin_tiny_patch4_window7_224", {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4],
                                                    "window_size": 2, "image_size": 64, "num_labels": 32}),),
)
