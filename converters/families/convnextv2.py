"""ConvNeXt-V2 (facebookresearch/ConvNeXt-V2 fine-tuned checkpoints) -> ConvNextV2ForImageClassification.

Original files are `{"model": state_dict}` (the published `*_ema.pt` files already hold the EMA
weights there). Policy: the weights are taken from "model"; any other entry (e.g. a training
`model_ema`) is ignored and named in the report. timm's `checkpoint_filter_fn` reads the same
entry, so oracle and conversion see the same tensors.
"""

from __future__ import annotations

import torch

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

_PLAN = Plan(
    renames=(
        Rename("downsample_layers.0.0.", "convnextv2.embeddings.patch_embeddings."),
        Rename("downsample_layers.0.1.", "convnextv2.embeddings.layernorm."),
        Rename("downsample_layers.{i}.0.", "convnextv2.encoder.stages.{i}.downsampling_layer.0."),  # LayerNorm
        Rename("downsample_layers.{i}.1.", "convnextv2.encoder.stages.{i}.downsampling_layer.1."),  # conv 2x2
        Rename("stages.{i}.{j}.norm.", "convnextv2.encoder.stages.{i}.layers.{j}.layernorm."),
        # GRN keeps its (1, 1, 1, C) shape in transformers: a rename, no reshape (timm needs one)
        Rename("stages.{i}.{j}.grn.gamma", "convnextv2.encoder.stages.{i}.layers.{j}.grn.weight"),
        Rename("stages.{i}.{j}.grn.beta", "convnextv2.encoder.stages.{i}.layers.{j}.grn.bias"),
        Rename("stages.{i}.{j}.", "convnextv2.encoder.stages.{i}.layers.{j}."),  # dwconv, pwconv1, pwconv2
        Rename("norm.", "convnextv2.layernorm."),
        Rename("head.", "classifier."),
    )
)


def plan(case: Case) -> Plan:
    return _PLAN


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The facebookresearch model's state dict, key for key, on the meta device."""
    depths, widths = case.config["depths"], case.config["hidden_sizes"]
    num_labels = case.config["num_labels"]
    shapes = {"downsample_layers.0.0.weight": (widths[0], 3, 4, 4), "downsample_layers.0.0.bias": (widths[0],)}
    shapes |= {"downsample_layers.0.1.weight": (widths[0],), "downsample_layers.0.1.bias": (widths[0],)}
    for i in range(1, 4):
        shapes |= {f"downsample_layers.{i}.0.weight": (widths[i - 1],), f"downsample_layers.{i}.0.bias": (widths[i - 1],)}
        shapes |= {f"downsample_layers.{i}.1.weight": (widths[i], widths[i - 1], 2, 2), f"downsample_layers.{i}.1.bias": (widths[i],)}
    for i, (depth, dim) in enumerate(zip(depths, widths)):
        for j in range(depth):
            p = f"stages.{i}.{j}."
            shapes |= {p + "dwconv.weight": (dim, 1, 7, 7), p + "dwconv.bias": (dim,)}
            shapes |= {p + "norm.weight": (dim,), p + "norm.bias": (dim,)}
            shapes |= {p + "pwconv1.weight": (4 * dim, dim), p + "pwconv1.bias": (4 * dim,)}
            shapes |= {p + "grn.gamma": (1, 1, 1, 4 * dim), p + "grn.beta": (1, 1, 1, 4 * dim)}
            shapes |= {p + "pwconv2.weight": (dim, 4 * dim), p + "pwconv2.bias": (dim,)}
    shapes |= {"norm.weight": (widths[-1],), "norm.bias": (widths[-1],)}
    shapes |= {"head.weight": (num_labels, widths[-1]), "head.bias": (num_labels,)}
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def oracle(case: Case, original):
    """timm's ConvNeXt-V2 loaded through timm's own filter for facebookresearch checkpoints."""
    from timm.models.convnext import checkpoint_filter_fn

    from ..reference import timm_model

    # The named size's timm variant (atto..nano use timm's 1x1-conv MLP), with depths and widths
    # passed explicitly so any configuration works, not only the published ones.
    c = case.config
    return timm_model(f"convnextv2_{case.params['size']}", original, checkpoint_filter_fn, depths=c["depths"], dims=c["hidden_sizes"],
                      num_classes=c["num_labels"])


def configurations(case: Case, tiny: bool):
    """The original ConvNeXt-V2 always has four stages (stem + three downsampling layers) and a
    classifier head; depths, widths and the number of classes are free."""
    from hypothesis import strategies as st

    width = st.integers(8, 32) if tiny else st.integers(1, 768)
    return st.fixed_dictionaries({
        "depths": st.lists(st.integers(1, 3 if tiny else 12), min_size=4, max_size=4),
        "hidden_sizes": st.lists(width, min_size=4, max_size=4),
        "num_labels": st.integers(1, 16 if tiny else 2000),
        "image_size": st.sampled_from([32, 64]) if tiny else st.integers(32, 1024),
    })


def evaluation(case: Case) -> Evaluation:
    """facebookresearch/ConvNeXt-V2 datasets.py build_transform(is_train=False) with main_finetune.py's
    defaults (README's evaluation commands keep them): below 384, crop_pct None -> 224/256, so
    Resize(int(224 / (224/256)) = 256, bicubic) and CenterCrop(224); from 384 on, Resize((size, size),
    bicubic), a warp without a crop; --imagenet_default_mean_and_std True -> ImageNet mean/std."""
    size = case.image_size
    rule = dict(warp=True) if size >= 384 else dict(crop_pct=224 / 256)
    return Evaluation(source="facebookresearch/ConvNeXt-V2 datasets.py build_transform(is_train=False) "
                             "(main_finetune.py defaults)",
                      crop_size=size, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, **rule)


FAMILY = Family.declared_in(
    globals(),
    cases=CASES,
    # Policy: the weights are taken from "model"; another entry (a training `model_ema`) is
    # ignored and named in the report. timm's filter reads the same entry.
    unwrap=("model",),
    # several blocks per stage (same-shape keys to swap), square matrices (a transposition
    # coverage cannot see)
    provenance=PROVENANCE,
    mutants=(Small("convnextv2_atto_1k_224", {"depths": [2, 1, 2, 1], "hidden_sizes": [8, 16, 32, 64], "num_labels": 64}),),
)
