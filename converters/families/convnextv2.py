"""ConvNeXt-V2 (facebookresearch/ConvNeXt-V2 fine-tuned checkpoints) -> ConvNextV2ForImageClassification.

Original files are `{"model": state_dict}` (the published `*_ema.pt` files already hold the EMA
weights there). Policy: the weights are taken from "model"; any other entry (e.g. a training
`model_ema`) is ignored and named in the report. timm's `checkpoint_filter_fn` reads the same
entry, so oracle and conversion see the same tensors.
"""

from __future__ import annotations

import torch

from .. import convnext_blocks
from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Plan, Rename

# size -> (depths, widths), from the original model definitions
SIZES = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}
# (size, pretraining data, resolution) of every published fine-tuned checkpoint
PUBLISHED = [(s, "1k", 224) for s in SIZES] + [
    (s, "22k", r) for s in ("nano", "tiny", "base", "large") for r in (224, 384)
] + [("huge", "22k", 384), ("huge", "22k", 512)]

BASE_URL = "https://dl.fbaipublicfiles.com/convnext/convnextv2"

PROVENANCE = Provenance(
    # facebookresearch/ConvNeXt-V2 README.md, "## License" (HEAD 2553895): "This project is released under
    # the MIT license except ImageNet pre-trained and fine-tuned models which are licensed under a
    # CC-BY-NC."; LICENSE holds the MIT text, then "Attribution-NonCommercial 4.0 International".
    licence="cc-by-nc-4.0",
    non_commercial=True,
    licence_statement="The ConvNeXt-V2 ImageNet pre-trained and fine-tuned weights are licensed under CC-BY-NC 4.0 "
                      "(non-commercial use only); the original code is MIT.",
    licence_source="facebookresearch/ConvNeXt-V2 README.md (## License) and LICENSE",
    repository="https://github.com/facebookresearch/ConvNeXt-V2",
    papers={"2301.00808": "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders"},
    # README "ImageNet-1K FCMAE pre-trained weights", TRAINING.md: FCMAE pre-training and fine-tuning on
    # ImageNet-1K; the 22k cases add the paper's "IN-22K intermediate fine-tuning" before it.
    datasets=("imagenet-1k",),
)


def _case(size: str, data: str, res: int) -> Case:
    depths, widths = SIZES[size]
    tag = "fcmae_ft_in1k" if data == "1k" else "fcmae_ft_in22k_in1k" + ("" if res == 224 else f"_{res}")
    return Case(
        id=f"convnextv2_{size}_{data}_{res}",
        family="convnextv2",
        hub_name=f"convnextv2-{size}-{data}-{res}",
        # transformers' own ConvNeXt-V2 conversion published every fine-tuned checkpoint under facebook/
        published_repo=f"facebook/convnextv2-{size}-{data}-{res}",
        url=f"{BASE_URL}/im{data}/convnextv2_{size}_{data}_{res}_ema.pt",
        config_class="ConvNextV2Config",
        # The original's final LayerNorm uses eps 1e-6; the config default 1e-12 differs from it.
        config=dict(depths=list(depths), hidden_sizes=list(widths), num_labels=1000, image_size=res, layer_norm_eps=1e-6),
        model_class="ConvNextV2ForImageClassification",
        output="logits",
        # The original evaluation: 224 resizes the short side to 256 and centre-crops; 384 and
        # 512 resize to a square without cropping (the processor does that at >= 384).
        processor_class="ConvNextImageProcessor",
        processor=dict(
            size={"shortest_edge": res},
            crop_pct=224 / 256 if res == 224 else None,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
            resample=3,  # PIL bicubic
            do_convert_rgb=True,  # grayscale, RGBA and palette images as the original loader's RGB
        ),
        timm_tag=f"convnextv2_{size}.{tag}",
        atol=1e-5,
        # huge at 512: ~260 s on 2 loaded cores (three 660M-parameter forwards of three images),
        # as much as the rest of the matrix: nightly, with `-m large`, or by name with -k.
        marks=("large",) if size == "huge" and res == 512 else (),
        params=dict(size=size),
        provenance={} if data == "1k" else {"datasets": ("imagenet-21k", "imagenet-1k")},
    )


CASES = tuple(_case(*published) for published in PUBLISHED)

# GRN keeps its (1, 1, 1, C) shape in transformers: a rename, no reshape (timm needs one)
_PLAN = Plan(renames=convnext_blocks.renames("convnextv2", block=(
    Rename("stages.{i}.{j}.grn.gamma", "convnextv2.encoder.stages.{i}.layers.{j}.grn.weight"),
    Rename("stages.{i}.{j}.grn.beta", "convnextv2.encoder.stages.{i}.layers.{j}.grn.bias"),
)))


def plan(case: Case) -> Plan:
    return _PLAN


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The facebookresearch model's state dict, key for key, on the meta device."""
    return convnext_blocks.layout(case.config, lambda prefix, dim: convnext_blocks.block(
        prefix, dim, before_pwconv2={"grn.gamma": (1, 1, 1, 4 * dim), "grn.beta": (1, 1, 1, 4 * dim)}))


def oracle(case: Case, original):
    """timm's ConvNeXt-V2 loaded through timm's own filter for facebookresearch checkpoints: the named
    size's variant (atto..nano use timm's 1x1-conv MLP), any depths and widths."""
    return convnext_blocks.timm_oracle(f"convnextv2_{case.params['size']}", case.config, original)


def evaluation(case: Case) -> Evaluation:
    """facebookresearch/ConvNeXt-V2 datasets.py build_transform(is_train=False) with main_finetune.py's
    defaults (README's evaluation commands keep them): below 384, crop_pct None -> 224/256, so
    Resize(int(224 / (224/256)) = 256, bicubic) and CenterCrop(224); from 384 on, Resize((size, size),
    bicubic), a warp without a crop; --imagenet_default_mean_and_std True -> ImageNet mean/std."""
    return convnext_blocks.evaluation(case.image_size, "facebookresearch/ConvNeXt-V2 datasets.py build_transform(is_train=False) "
                                                "(main_finetune.py defaults)")


FAMILY = Family.declared_in(
    globals(),
    cases=CASES,
    configurations=convnext_blocks.configurations,
    # Policy: the weights are taken from "model"; another entry (a training `model_ema`) is
    # ignored and named in the report. timm's filter reads the same entry.
    unwrap=("model",),
    # several blocks per stage (same-shape keys to swap), square matrices (a transposition
    # coverage cannot see)
    provenance=PROVENANCE,
    mutants=(Small("convnextv2_atto_1k_224", {"depths": [2, 1, 2, 1], "hidden_sizes": [8, 16, 32, 64], "num_labels": 64}),),
)
