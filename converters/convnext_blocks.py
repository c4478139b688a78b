"""What ConvNeXt-style families share: facebookresearch's ConvNeXt layout (V1 and V2 alike) and its
names in transformers' ConvNext / ConvNextV2 models.

Original files hold `downsample_layers.0.{0,1}` (the stem: 4x4 conv, LayerNorm),
`downsample_layers.{1..3}.{0,1}` (LayerNorm, 2x2 conv), `stages.{i}.{j}.{dwconv,norm,pwconv1,pwconv2}`
plus what the version adds to a block, the final `norm` and `head`. transformers holds the same
modules under `<model>.embeddings`, `<model>.encoder.stages.{i}.downsampling_layer` and `.layers.{j}`,
`<model>.layernorm` and `classifier`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .case import IMAGENET_MEAN, IMAGENET_STD
from .evaluation import Evaluation
from .plan import Rename


def renames(model: str, block: tuple[Rename, ...] = ()) -> tuple[Rename, ...]:
    """The shared renames into transformers' `<model>.` prefix; `block` renames a version's own block
    entries (tried before the block's generic rename)."""
    layer = f"{model}.encoder.stages.{{i}}.layers.{{j}}."
    return (
        Rename("downsample_layers.0.0.", f"{model}.embeddings.patch_embeddings."),
        Rename("downsample_layers.0.1.", f"{model}.embeddings.layernorm."),
        Rename("downsample_layers.{i}.0.", f"{model}.encoder.stages.{{i}}.downsampling_layer.0."),  # LayerNorm
        Rename("downsample_layers.{i}.1.", f"{model}.encoder.stages.{{i}}.downsampling_layer.1."),  # conv 2x2
        Rename("stages.{i}.{j}.norm.", layer + "layernorm."),
        *block,
        Rename("stages.{i}.{j}.", layer),  # dwconv, pwconv1, pwconv2
        Rename("norm.", f"{model}.layernorm."),
        Rename("head.", "classifier."),
    )


def layout(config, block: Callable[[str, int], dict]) -> dict[str, torch.Tensor]:
    """The original model's state dict on the meta device, in its order, for a config's `depths`,
    `hidden_sizes` and `num_labels`; `block(prefix, width)` gives one block's entries and shapes."""
    depths, widths = config["depths"], config["hidden_sizes"]
    shapes = {"downsample_layers.0.0.weight": (widths[0], 3, 4, 4), "downsample_layers.0.0.bias": (widths[0],)}
    shapes |= {"downsample_layers.0.1.weight": (widths[0],), "downsample_layers.0.1.bias": (widths[0],)}
    for i in range(1, 4):
        shapes |= {f"downsample_layers.{i}.0.weight": (widths[i - 1],), f"downsample_layers.{i}.0.bias": (widths[i - 1],)}
        shapes |= {f"downsample_layers.{i}.1.weight": (widths[i], widths[i - 1], 2, 2), f"downsample_layers.{i}.1.bias": (widths[i],)}
    for i, (depth, dim) in enumerate(zip(depths, widths)):
        for j in range(depth):
            shapes |= block(f"stages.{i}.{j}.", dim)
    shapes |= {"norm.weight": (widths[-1],), "norm.bias": (widths[-1],)}
    shapes |= {"head.weight": (config["num_labels"], widths[-1]), "head.bias": (config["num_labels"],)}
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def block(prefix: str, dim: int, first: dict | None = None, before_pwconv2: dict | None = None) -> dict:
    """One block's entries in the original's order: a version's own parameters (`first`: the block's
    own, registered before its submodules'; `before_pwconv2`: a module between the two linears),
    relative to the block, around the depthwise 7x7 conv, LayerNorm and the two pointwise linears."""
    entries = {**(first or {}), "dwconv.weight": (dim, 1, 7, 7), "dwconv.bias": (dim,), "norm.weight": (dim,),
               "norm.bias": (dim,), "pwconv1.weight": (4 * dim, dim), "pwconv1.bias": (4 * dim,),
               **(before_pwconv2 or {}), "pwconv2.weight": (dim, 4 * dim), "pwconv2.bias": (dim,)}
    return {prefix + k: s for k, s in entries.items()}


def evaluation(image_size: int, source: str) -> Evaluation:
    """datasets.py build_transform(is_train=False), the same in both facebookresearch repositories,
    with the training scripts' defaults: below 384, crop_pct None -> 224/256, so Resize(int(size /
    crop_pct), bicubic) and CenterCrop(size); from 384 on, Resize((size, size), bicubic), a warp
    without a crop; --imagenet_default_mean_and_std True -> ImageNet mean/std."""
    rule = dict(warp=True) if image_size >= 384 else dict(crop_pct=224 / 256)
    return Evaluation(source=source, crop_size=image_size, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, **rule)


def configurations(case, tiny: bool):
    """The original ConvNeXt (V1 and V2) always has four stages (stem + three downsampling layers)
    and a classifier head; depths, widths and the number of classes are free."""
    from hypothesis import strategies as st

    width = st.integers(8, 32) if tiny else st.integers(1, 768)
    return st.fixed_dictionaries({
        "depths": st.lists(st.integers(1, 3 if tiny else 12), min_size=4, max_size=4),
        "hidden_sizes": st.lists(width, min_size=4, max_size=4),
        "num_labels": st.integers(1, 16 if tiny else 2000),
        "image_size": st.sampled_from([32, 64]) if tiny else st.integers(32, 1024),
    })


def timm_oracle(arch: str, config, original):
    """timm's model `arch` loaded through timm's own filter for facebookresearch checkpoints (V1 and
    V2 alike: the `checkpoint_filter_fn` of the module defining `arch`), with depths and widths passed
    explicitly so any configuration works."""
    import sys

    from timm.models import model_entrypoint

    from .reference import timm_model

    checkpoint_filter_fn = sys.modules[model_entrypoint(arch).__module__].checkpoint_filter_fn
    return timm_model(arch, original, checkpoint_filter_fn, depths=config["depths"], dims=config["hidden_sizes"],
                      num_classes=config["num_labels"])
