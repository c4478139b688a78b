"""DeiT (facebookresearch/deit) -> ViTForImageClassification (plain) and
DeiTForImageClassificationWithTeacher (distilled).

Original files are `{"model": state_dict}` (main.py loads `checkpoint['model']`) of models.py's
models, timm's `VisionTransformer` (plain) and its subclass `DistilledVisionTransformer`:

    cls_token (1, 1, D), pos_embed (1, 1 + N, D) | (1, 2 + N, D) distilled, dist_token (1, 1, D)
    distilled only, patch_embed.proj (patch 16), blocks.{i}.{norm1, attn.qkv (fused q, k, v; weight
    and bias), attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head, head_dist (distilled only)

What transformers published (its two conversion scripts, read for this module): the plain files
as `ViTForImageClassification` (model_type "vit"; vit/convert_vit_timm_to_pytorch.py handles the
deit_* names), the distilled ones as `DeiTForImageClassificationWithTeacher` (model_type "deit";
deit/convert_deit_timm_to_pytorch.py). The cases target the same classes. `DeiTForImageClassification`
holds neither: its embeddings always carry a distillation token (N + 2 positions), and it has no
distillation head (the distilled original's output averages both heads).

Where the published repos differ from the original (an --audit names it): neither script sets
layer_norm_eps, so their configs keep 1e-12 (the original's LayerNorms: 1e-6; these cases set it),
and their DeiTImageProcessor warps the image to a square (256x256, or the model's size for the plain
ones) before the crop: on scikit-image's chelsea (451x300) 2.59 from the original evaluation's pixels
at 224, where this family's processor is exact (measured, transformers 5.25).

At evaluation both the original (`DistilledVisionTransformer.forward`, not training) and
transformers' `...WithTeacher` return (head(class token) + head_dist(distillation token)) / 2, as
timm's `VisionTransformerDistilled` (the oracle, through timm's own `checkpoint_filter_fn`) does.
"""

from __future__ import annotations

import torch

from .. import vit_blocks
from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Line, Plan, Rename

# size -> (embed dim, depth, heads), from models.py (patch 16, MLP ratio 4, qkv bias, LayerNorm eps 1e-6)
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}
PATCH = 16
BASE_URL = "https://dl.fbaipublicfiles.com/deit"
# (size, distilled, image size, file): README_deit.md's model table, the files models.py loads
PUBLISHED = (
    ("tiny", False, 224, "deit_tiny_patch16_224-a1311bcf.pth"),
    ("small", False, 224, "deit_small_patch16_224-cd65a155.pth"),
    ("base", False, 224, "deit_base_patch16_224-b5f2ef4d.pth"),
    ("base", False, 384, "deit_base_patch16_384-8de9b5d1.pth"),
    ("tiny", True, 224, "deit_tiny_distilled_patch16_224-b40b3cf7.pth"),
    ("small", True, 224, "deit_small_distilled_patch16_224-649709d9.pth"),
    ("base", True, 224, "deit_base_distilled_patch16_224-df68dfff.pth"),
    ("base", True, 384, "deit_base_distilled_patch16_384-d0272ac0.pth"),
)
EVAL_CROP_RATIO = 0.875  # main.py --eval-crop-ratio default

PROVENANCE = Provenance(
    # facebookresearch/deit README.md "# License" (HEAD 7e160fe): "This repository is released under the Apache 2.0
    # license as found in the LICENSE file." LICENSE: Apache 2.0 since commit 0c4b8f6 (CC BY-NC 4.0 before).
    licence="apache-2.0",
    licence_statement="The DeiT repository, code and released models, is under the Apache 2.0 license (its README "
                      "and LICENSE; CC BY-NC 4.0 until the licence change of commit 0c4b8f6).",
    licence_source="facebookresearch/deit README.md (# License) and LICENSE",
    repository="https://github.com/facebookresearch/deit",
    papers={"2012.12877": "Training data-efficient image transformers & distillation through attention"},
    datasets=("imagenet-1k",),
)


def _case(size: str, distilled: bool, image: int, file: str) -> Case:
    dim, depth, heads = SIZES[size]
    name = f"deit_{size}{'_distilled' if distilled else ''}_patch{PATCH}_{image}"
    hub = name.replace("_", "-")
    return Case(
        id=name,
        family="deit",
        hub_name=hub,
        published_repo=f"facebook/{hub}",  # transformers' ViT (plain) and DeiT (distilled) conversions published them
        url=f"{BASE_URL}/{file}",
        timm_tag=f"{name}.fb_in1k",
        config_class="DeiTConfig" if distilled else "ViTConfig",
        config=dict(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * dim,
                    image_size=image, patch_size=PATCH, qkv_bias=True, hidden_act="gelu",
                    layer_norm_eps=1e-6,  # models.py: LayerNorm eps 1e-6 (both configs default to 1e-12)
                    num_labels=1000),
        model_class="DeiTForImageClassificationWithTeacher" if distilled else "ViTForImageClassification",
        output="logits",
        # The original evaluation (`EVALUATION`): the short side to int(image / 0.875), bicubic,
        # centre crop `image`. BitImageProcessor does exactly that at every size (the published repos'
        # DeiTImageProcessor warps to a square first).
        processor_class="BitImageProcessor",
        processor=dict(do_resize=True, size={"shortest_edge": int(image / EVAL_CROP_RATIO)}, resample=3,  # PIL bicubic
                       do_center_crop=True, crop_size={"height": image, "width": image},
                       do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                       do_convert_rgb=True),
        # measured on random weights, every case at its size, transformers 5.25 and 4.57.6: 0.0 from
        # timm's logits (the same operations in the same order); 1e-6 leaves room for a thread count
        atol=1e-6,
        params=dict(size=size, distilled=distilled),
    )


CASES = tuple(_case(*published) for published in PUBLISHED)


def evaluation(case: Case) -> Evaluation:
    """facebookresearch/deit datasets.py build_transform(is_train=False): Resize(int(input_size /
    eval_crop_ratio), interpolation=3 (bicubic)), CenterCrop(input_size), ImageNet mean/std; main.py's
    eval_crop_ratio defaults to 0.875 (before 2022-09 the code wrote int(256 / 224 * input_size), the
    same sizes: 256 at 224, 438 at 384)."""
    return Evaluation(source="facebookresearch/deit datasets.py build_transform(is_train=False)",
                      crop_size=case.image_size, crop_pct=EVAL_CROP_RATIO, interpolation="bicubic",
                      mean=IMAGENET_MEAN, std=IMAGENET_STD)


# --------------------------------------------------------------------------- plan


def plan(case: Case) -> Plan:
    distilled = case.params["distilled"]
    model = "deit." if distilled else "vit."
    block = "blocks.{i}."
    renames = (
        Rename("cls_token", model + "embeddings.cls_token"),
        Rename("dist_token", model + "embeddings.distillation_token"),
        Rename("pos_embed", model + "embeddings.position_embeddings"),
        Rename("patch_embed.proj.", model + "embeddings.patch_embeddings.projection."),
        Rename("norm.", model + "layernorm."),
        Rename("head.", "cls_classifier." if distilled else "classifier."),
        Rename("head_dist.", "distillation_classifier."),
    )
    # transformers 5 names the layers `layers.{i}` with q/k/v/o_proj and mlp.fc1/fc2; 4.57 the
    # BERT-style `encoder.layer.{i}` names
    line5, line4 = model + "layers.{i}.", model + "encoder.layer.{i}."
    return Plan(
        renames=renames,
        ops=vit_blocks.split_qkv(block),
        by_line={
            5: Line(renames=(*vit_blocks.projections(block, line5),
                             Rename(block + "norm1.", line5 + "layernorm_before."),
                             Rename(block + "norm2.", line5 + "layernorm_after."),
                             Rename(block + "mlp.", line5 + "mlp."))),
            4: Line(renames=(*vit_blocks.attention(block, line4), *vit_blocks.bert_block(block, line4))),
        },
    )


# --------------------------------------------------------------------------- original layout


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The original model's state dict, key for key, on the meta device: the root's parameters
    first (DistilledVisionTransformer's dist_token after the inherited two), then the modules in
    the order they were registered (head_dist last)."""
    c = case.config
    dim, patch, hidden, labels = c["hidden_size"], c["patch_size"], c["intermediate_size"], c["num_labels"]
    distilled = case.params["distilled"]
    tokens = (2 if distilled else 1) + (c["image_size"] // patch) ** 2
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim)}
    if distilled:
        shapes["dist_token"] = (1, 1, dim)
    shapes |= {"patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(c["num_hidden_layers"]):
        p = f"blocks.{i}."
        shapes |= {p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                   p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                   p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                   p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                   p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
                   p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,)}
    shapes |= {"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (labels, dim), "head.bias": (labels,)}
    if distilled:
        shapes |= {"head_dist.weight": (labels, dim), "head_dist.bias": (labels,)}
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# --------------------------------------------------------------------------- oracle


def oracle(case: Case, original):
    """timm's DeiT (`VisionTransformer`, or `VisionTransformerDistilled` whose eval output averages
    both heads) for the case's geometry, loaded through timm's own `checkpoint_filter_fn`."""
    from timm.models.deit import checkpoint_filter_fn

    from ..reference import timm_model

    c = case.config
    arch = f"deit_base{'_distilled' if case.params['distilled'] else ''}_patch16_224"
    return timm_model(arch, original, checkpoint_filter_fn, img_size=c["image_size"], patch_size=c["patch_size"],
                      embed_dim=c["hidden_size"], depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                      mlp_ratio=c["intermediate_size"] / c["hidden_size"], num_classes=c["num_labels"])


def configurations(case: Case, tiny: bool):
    """Any width (heads x head size), depth, MLP width (a whole multiple of the width: timm takes a
    ratio), patch, grid and classes, for the case's layout (plain or distilled)."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        heads = draw(st.integers(1, 4 if tiny else 16))
        dim = heads * draw(st.integers(1, 8) if tiny else st.integers(1, 64))
        patch = draw(st.sampled_from([1, 2, 4] if tiny else [4, 8, 16, 32]))
        return {"num_attention_heads": heads, "hidden_size": dim,
                "intermediate_size": dim * draw(st.integers(1, 4)),
                "num_hidden_layers": draw(st.integers(1, 3 if tiny else 24)),
                "patch_size": patch, "image_size": patch * draw(st.integers(1, 4 if tiny else 24)),
                "num_labels": draw(st.integers(1, 16 if tiny else 2000))}

    return config()


# several blocks (same-shape keys to swap), square matrices, a grid of 4x4 patches
SMALL = {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 64,
          "patch_size": 8, "image_size": 32, "num_labels": 16}

FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    unwrap=("model",),
    mutants=(Small("deit_tiny_patch16_224", SMALL, 32), Small("deit_tiny_distilled_patch16_224", SMALL, 32)),
)
