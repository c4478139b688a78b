"""BEiT (microsoft/unilm beit) -> BeitForImageClassification.

Original files are `{"model": state_dict}` (the training arguments may sit beside it as an
`argparse.Namespace`, which the safe loader allows and nothing else), written by
beit/modeling_finetune.py `VisionTransformer` with `use_rel_pos_bias=True` (one relative position
bias table per block: the fine-tuning default, run_class_finetuning.py `--rel_pos_bias`, which copies
the pre-training's shared table into every block), no absolute position embedding, mean pooling:

    cls_token, patch_embed.proj, blocks.{i}.{gamma_1, gamma_2, norm1, attn.q_bias, attn.v_bias,
    attn.relative_position_bias_table, attn.relative_position_index (buffer), attn.qkv.weight (fused,
    no k bias), attn.proj, norm2, mlp.fc1, mlp.fc2}, fc_norm, head

That is the architecture data2vec-vision was built on; the conversion, the layout and timm's oracle
are shared with it (converters/relpos_vit.py), transformers' BEiT classes naming the base model `beit`.
The self-supervised `pt22k` files (a shared table, `mask_token`, an 8192-way `lm_head`) are
BeitForMaskedImageModeling's, not converted here.
"""

from __future__ import annotations

import argparse

import torch

from .. import relpos_vit
from ..case import Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Plan

# size -> (hidden size, depth, heads, MLP size): beit/modeling_finetune.py beit_{base,large}_patch16_*
SIZES = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}
PATCH = 16
BASE_URL = "https://unilm.blob.core.windows.net/beit"
# (size, image, what the file was fine-tuned on, timm tag of the same weights): beit/README.md, the
# ImageNet-22k checkpoints and the "Fine-tuning on ImageNet-1k" table, as transformers' conversion
# (convert_beit_unilm_to_pytorch.py) published them: microsoft/beit-{size}-patch16-{image} from the
# `pt22k_ft22kto1k` files, microsoft/beit-{size}-patch16-224-pt22k-ft22k from the `pt22k_ft22k` ones.
PUBLISHED = (
    ("base", 224, "ft22kto1k", "beit_base_patch16_224.in22k_ft_in22k_in1k"),
    ("base", 384, "ft22kto1k", "beit_base_patch16_384.in22k_ft_in22k_in1k"),
    ("base", 224, "ft22k", "beit_base_patch16_224.in22k_ft_in22k"),
    ("large", 224, "ft22kto1k", "beit_large_patch16_224.in22k_ft_in22k_in1k"),
    ("large", 384, "ft22kto1k", "beit_large_patch16_384.in22k_ft_in22k_in1k"),
    ("large", 512, "ft22kto1k", "beit_large_patch16_512.in22k_ft_in22k_in1k"),
    ("large", 224, "ft22k", "beit_large_patch16_224.in22k_ft_in22k"),
)
LABELS = {"ft22kto1k": 1000, "ft22k": 21841}  # ImageNet-1k; ImageNet-22k as the original trains it (--nb_classes 21841)

PROVENANCE = Provenance(
    # microsoft/unilm beit/README.md "## License": "This project is licensed under the license found in the
    # LICENSE file in the root directory of this source tree."; LICENSE (HEAD 0e31c7c): "MIT License,
    # Copyright (c) Microsoft Corporation". The README links the weights and states no other terms for them.
    licence="mit",
    licence_statement="The BEiT code and its released weights are under the MIT License (microsoft/unilm's LICENSE, "
                      "which beit/README.md names; it states no separate terms for the weights).",
    licence_source="microsoft/unilm beit/README.md (## License) and LICENSE",
    repository="https://github.com/microsoft/unilm/tree/master/beit",
    papers={"2106.08254": "BEiT: BERT Pre-Training of Image Transformers"},
    # self-supervised pre-training and intermediate fine-tuning on ImageNet-22k, then ImageNet-1k
    datasets=("imagenet-21k", "imagenet-1k"),
)


def _case(size: str, image: int, tuned: str, tag: str) -> Case:
    hidden, depth, heads, mlp = SIZES[size]
    name = f"beit_{size}_patch{PATCH}_{image}" + ("_pt22k_ft22k" if tuned == "ft22k" else "")
    hub = name.replace("_", "-")
    crop_pct = 224 / 256 if image < 384 else 1.0  # EVALUATION below
    return Case(
        id=name,
        family="beit",
        hub_name=hub,
        published_repo=f"microsoft/{hub}",
        url=f"{BASE_URL}/beit_{size}_patch{PATCH}_{image}_pt22k_{tuned}.pth",
        timm_tag=tag,
        config_class="BeitConfig",
        config=dict(
            hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp,
            image_size=image, patch_size=PATCH,
            use_absolute_position_embeddings=False,
            use_relative_position_bias=True,  # one table per block
            use_shared_relative_position_bias=False,
            use_mean_pooling=True,
            use_mask_token=False,
            # The original LayerNorms use eps 1e-6 (modeling_finetune.py); BeitConfig's default is 1e-12.
            layer_norm_eps=1e-6,
            num_labels=LABELS[tuned],
        ),
        model_class="BeitForImageClassification",
        output="logits",
        # The original evaluation (`evaluation`): the short side to int(image / crop_pct), bicubic, centre
        # crop, mean/std 0.5. BitImageProcessor, as for data2vec-vision: 4.57.6's BeitImageProcessor takes
        # only a height and width (the published repos' squash to a square, bilinear), no short side.
        processor_class="BitImageProcessor",
        processor=dict(do_resize=True, size={"shortest_edge": int(image / crop_pct)}, resample=3,  # PIL bicubic
                       do_center_crop=True, crop_size={"height": image, "width": image},
                       do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                       do_convert_rgb=True),  # grayscale, RGBA and palette images as the original loader's RGB
        atol=1e-5,
        params=dict(size=size),
        provenance={} if tuned == "ft22kto1k" else {"datasets": ("imagenet-21k",)},
    )


CASES = tuple(_case(*published) for published in PUBLISHED)


def evaluation(case: Case) -> Evaluation:
    """microsoft/unilm beit/datasets.py build_transform(is_train=False), with run_class_finetuning.py's
    defaults (the README's `--eval` commands keep them): crop_pct None -> 224/256 below 384 px and
    1.0 from 384 up, Resize(int(input_size / crop_pct), interpolation=3 (bicubic)),
    CenterCrop(input_size); --imagenet_default_mean_and_std off -> timm's Inception mean/std (0.5)."""
    source = "microsoft/unilm beit/datasets.py build_transform(is_train=False) (run_class_finetuning.py defaults)"
    return Evaluation(source=source, crop_size=case.image_size, crop_pct=224 / 256 if case.image_size < 384 else 1.0,
                      interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


# --------------------------------------------------------------------------- plan, layout, oracle


def plan(case: Case) -> Plan:
    return relpos_vit.plan(case.config, classifier=True, base="beit", projections=(5,))  # 5.x: the refactored BEiT


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    return relpos_vit.original_layout(case.config, classifier=True)


def oracle(case: Case, original):
    """timm's BEiT for the case's geometry through timm's own `checkpoint_filter_fn`."""
    from timm.models.beit import checkpoint_filter_fn

    return relpos_vit.oracle(case.config, True, original, f"beit_{case.params['size']}_patch16_224", checkpoint_filter_fn)


def configurations(case: Case, tiny: bool):
    """Any depth, heads x head size, MLP size, patch size, window and classes."""
    return relpos_vit.configurations(classifier=True, tiny=tiny)


FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    unwrap=("model",),
    allow=(argparse.Namespace,),  # the training arguments stored next to the weights
    mutants=(Small("beit_base_patch16_224", {**relpos_vit.SMALL, "num_labels": 32}),),
)
