"""ConvNeXt (facebookresearch/ConvNeXt, V1) -> ConvNextForImageClassification.

Original files are `{"model": state_dict}` (utils.py save_model; main.py --eval --resume loads
checkpoint["model"], the published `*_ema.pth` files hold the EMA weights there). models/convnext.py:

    downsample_layers.{0..3}.{0,1}, stages.{i}.{j}.{gamma, dwconv, norm, pwconv1, pwconv2}, norm, head

`gamma` is the block's layer scale (C,), registered before its submodules; transformers names it
`layer_scale_parameter`. Everything else is the layout ConvNeXt V2 shares (`converters.convnext`).
The oracle is timm's ConvNeXt through timm's own `checkpoint_filter_fn`.
"""

from __future__ import annotations

import torch

from .. import convnext_blocks
from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Plan, Rename

# size -> (depths, widths): models/convnext.py's convnext_{tiny,small,base,large,xlarge}
SIZES = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
# (size, training data, resolution, file suffix): the files transformers' convert_convnext_to_pytorch.py
# converted (its expected-logits table), which the original README links
PUBLISHED = (
    ("tiny", "1k", 224, "_ema"), ("small", "1k", 224, "_ema"), ("base", "1k", 224, "_ema"), ("base", "1k", 384, ""),
    ("large", "1k", 224, "_ema"), ("large", "1k", 384, ""),
    ("base", "22k", 224, ""), ("large", "22k", 224, ""), ("xlarge", "22k", 224, ""),
    ("base", "22k_1k", 224, ""), ("base", "22k_1k", 384, ""), ("large", "22k_1k", 224, ""), ("large", "22k_1k", 384, ""),
    ("xlarge", "22k_1k", 224, "_ema"), ("xlarge", "22k_1k", 384, "_ema"),
)
# ImageNet-22K pre-training classes (README "ImageNet-22K trained models"; timm's fb_in22k tags)
IN22K_CLASSES = 21841
BASE_URL = "https://dl.fbaipublicfiles.com/convnext"
# timm's pretrained tag of the same file, by training data (timm has no tag for the 1k 384 files)
TIMM_TAGS = {("1k", 224): "fb_in1k", ("22k", 224): "fb_in22k", ("22k_1k", 224): "fb_in22k_ft_in1k",
             ("22k_1k", 384): "fb_in22k_ft_in1k_384"}
DATASETS = {"1k": ("imagenet-1k",), "22k": ("imagenet-21k",), "22k_1k": ("imagenet-21k", "imagenet-1k")}

PROVENANCE = Provenance(
    # facebookresearch/ConvNeXt README.md "## License" (HEAD 048efce): "This project is released under
    # the MIT license. Please see the LICENSE file for more information."; LICENSE: "MIT License,
    # Copyright (c) Meta Platforms, Inc. and affiliates." No separate terms for the weights.
    licence="mit",
    licence_statement="The ConvNeXt code and its released ImageNet weights are under the MIT License (the repository's "
                      "LICENSE; its README states no separate terms for the weights).",
    licence_source="facebookresearch/ConvNeXt README.md (## License) and LICENSE",
    repository="https://github.com/facebookresearch/ConvNeXt",
    papers={"2201.03545": "A ConvNet for the 2020s"},
    datasets=("imagenet-1k",),
)


def _case(size: str, data: str, res: int, suffix: str) -> Case:
    depths, widths = SIZES[size]
    hub = f"convnext-{size}-{res}" + ("" if data == "1k" else "-" + data.replace("_", "-"))
    tag = TIMM_TAGS.get((data, res))
    return Case(
        id=f"convnext_{size}_{data}_{res}",
        family="convnext",
        hub_name=hub,
        published_repo=f"facebook/{hub}",  # transformers' own ConvNeXt conversion published them there
        url=f"{BASE_URL}/convnext_{size}_{data}_{res}{suffix}.pth",
        timm_tag=tag and f"convnext_{size}.{tag}",
        config_class="ConvNextConfig",
        # The original's final LayerNorm uses eps 1e-6 (transformers hard-codes 1e-6 for the others);
        # the config default 1e-12 differs from it.
        config=dict(depths=list(depths), hidden_sizes=list(widths), num_labels=IN22K_CLASSES if data == "22k" else 1000,
                    image_size=res, layer_norm_eps=1e-6),
        model_class="ConvNextForImageClassification",
        output="logits",
        # The original evaluation: 224 resizes the short side to 256 and centre-crops; 384 resizes
        # to a square without cropping (the processor does that at >= 384).
        processor_class="ConvNextImageProcessor",
        processor=dict(size={"shortest_edge": res}, crop_pct=224 / 256 if res == 224 else None, image_mean=list(IMAGENET_MEAN),
                       image_std=list(IMAGENET_STD), resample=3,  # PIL bicubic
                       do_convert_rgb=True),  # grayscale, RGBA and palette images as the original loader's RGB
        # measured on random weights (convnext_tiny_1k_224, transformers 5.25 and 4.57.6): logits equal to
        # timm's (0.0); the original models/convnext.py itself is 1.4e-6 from both (its channels-first
        # LayerNorm computes mean and variance by hand)
        atol=1e-5,
        params=dict(size=size),
        provenance={} if data == "1k" else {"datasets": DATASETS[data]},
    )


CASES = tuple(_case(*published) for published in PUBLISHED)

_PLAN = Plan(renames=convnext_blocks.renames("convnext", block=(
    Rename("stages.{i}.{j}.gamma", "convnext.encoder.stages.{i}.layers.{j}.layer_scale_parameter"),
)))


def plan(case: Case) -> Plan:
    return _PLAN


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """models/convnext.py ConvNeXt's state dict, key for key, on the meta device."""
    return convnext_blocks.layout(case.config, lambda prefix, dim: convnext_blocks.block(prefix, dim, first={"gamma": (dim,)}))


def oracle(case: Case, original):
    """timm's ConvNeXt loaded through timm's own filter for facebookresearch checkpoints, any depths
    and widths."""
    return convnext_blocks.timm_oracle(f"convnext_{case.params['size']}", case.config, original)


def evaluation(case: Case) -> Evaluation:
    """facebookresearch/ConvNeXt datasets.py build_transform(is_train=False) with main.py's defaults
    (README's evaluation command keeps them, changing only --input_size): below 384, crop_pct None ->
    224/256, Resize(256, bicubic) and CenterCrop(224); from 384 on, Resize((384, 384), bicubic), a warp."""
    return convnext_blocks.evaluation(case.image_size, "facebookresearch/ConvNeXt datasets.py build_transform(is_train=False) "
                                                "(main.py defaults)")


FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    # four stages, a head, layer scale (every published model has it: layer_scale_init_value 1e-6)
    configurations=convnext_blocks.configurations,
    # main.py --eval --resume reads checkpoint["model"] (auto_load_model); timm's filter reads the same
    # entry. Another entry (a training checkpoint's `model_ema`, optimizer) is ignored and named.
    unwrap=("model",),
    # several blocks per stage (same-shape keys to swap), square matrices (a transposition coverage
    # cannot see)
    mutants=(Small("convnext_tiny_1k_224", {"depths": [2, 1, 2, 1], "hidden_sizes": [8, 16, 32, 64], "num_labels": 64}),),
)
