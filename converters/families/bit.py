"""Big Transfer (google-research/big_transfer) -> BitForImageClassification.

Original files are flat `.npz` archives (numpy, as the JAX/TF code saves them; `converters.checkpoint`
reads them with allow_pickle=False), keys as the original's loaders read them (bit_pytorch/models.py
`ResNetV2.load_from`, `PreActBottleneck.load_from`):

    resnet/root_block/standardized_conv2d/kernel                 7x7 stem, HWIO
    resnet/block{1..4}/unit{01..}/{a,b,c}/group_norm/{gamma,beta}  the pre-activation norm before conv a, b, c
    resnet/block{1..4}/unit{01..}/{a,b,c}/standardized_conv2d/kernel
    resnet/block{1..4}/unit01/a/proj/standardized_conv2d/kernel  the projection shortcut (first unit)
    resnet/group_norm/{gamma,beta}, resnet/head/conv2d/{kernel,bias}   pre-head norm, 1x1 conv head

Kernels are HWIO (the original's `tf2th` permutes them with (3, 2, 0, 1)), norms are (C,). Blocks
and units count from 1 (`unit01`): transformers' stages and layers from 0, so the renames are
whole keys, one per tensor, written out from the configuration. The head's (1, 1, C, N) kernel is
a (N, C) Linear in transformers. The oracle is timm's BiT (`resnetv2_50x1_bit`), given the original
as an `.npz` through timm's own loader (`ResNetV2.load_pretrained`, `_load_weights`).
"""

from __future__ import annotations

import io

import torch

from ..case import Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Permute, Plan, Rename, Reshape

REPOSITORY = "https://github.com/google-research/big_transfer"
HWIO_TO_OIHW = (3, 2, 0, 1)  # bit_pytorch/models.py tf2th; timm's _load_weights t2p
# Weight standardisation: the original's every framework divides by sqrt(var + 1e-10)
# (bit_pytorch/models.py StdConv2d, bit_jax/models.py StdConv, bit_tf2/models.py StandardizedConv2D);
# timm's BiT (_create_resnetv2_bit: StdConv2d eps=1e-8) and transformers (modeling_bit.py: every
# WeightStandardizedConv2d of the model is built with eps=1e-8, not configurable) add 1e-8.
ORIGINAL_EPS, TIMM_EPS, TRANSFORMERS_EPS = 1e-10, 1e-8, 1e-8
OUTPUT_DIVERGENCE = (
    "weight standardisation adds eps 1e-8 to each kernel's variance in transformers (hard-coded in modeling_bit.py) "
    "and in timm, 1e-10 in the original (bit_pytorch, bit_jax and bit_tf2 alike): each standardised kernel is scaled "
    "by sqrt((var + 1e-10) / (var + 1e-8)), about 1 - 5e-9 / var; on the synthetic weights (variance 1/fan-in) at "
    "480 px the logits move by 9.3e-04 (tests/test_bit.py), against 9.5e-06 between transformers and timm; kernels of "
    "smaller variance move more")

PROVENANCE = Provenance(
    # google-research/big_transfer LICENSE (HEAD 140de6e): Apache License 2.0; its README links the
    # weights (storage.googleapis.com/bit_models) and states no other terms for them.
    licence="apache-2.0",
    licence_statement="The Big Transfer code and its released weights are under the Apache License 2.0 (the "
                      "repository's LICENSE; its README states no separate terms for the weights).",
    licence_source="google-research/big_transfer LICENSE and README.md (BiT-M models fine-tuned on ILSVRC-2012)",
    repository=REPOSITORY,
    papers={"1912.11370": "Big Transfer (BiT): General Visual Representation Learning"},
    datasets=("imagenet-21k", "imagenet-1k"),  # BiT-M: ImageNet-21k, then fine-tuned on ILSVRC-2012
)

# The one checkpoint transformers' conversion published (src/transformers/models/bit/
# convert_bit_to_pytorch.py converted timm's `resnetv2_50x1_bitm`, whose pretrained URL was this
# file; its tests load google/bit-50). The README's "BiT-M models fine-tuned on ILSVRC-2012" names
# the file: the R50x1 BiT-M file with the `-ILSVRC2012` postfix.
CASES = (
    Case(
        id="bit_50",
        family="bit",
        hub_name="bit-50",
        published_repo="google/bit-50",
        url="https://storage.googleapis.com/bit_models/BiT-M-R50x1-ILSVRC2012.npz",
        timm_tag="resnetv2_50x1_bit.goog_in21k_ft_in1k",
        config_class="BitConfig",
        # R50x1 (bit_pytorch/models.py KNOWN_MODELS 'BiT-M-R50x1': ResNetV2([3, 4, 6, 3], 1)): a 64-wide
        # stem, stage widths 256 * 2**i, 32 groups in every GroupNorm (eps 1e-5, as transformers')
        config=dict(layer_type="preactivation", global_padding=None, embedding_dynamic_padding=False, embedding_size=64,
                    hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], num_groups=32, num_labels=1000,
                    image_size=480),
        model_class="BitForImageClassification",
        output="logits",
        # BiT's processor warps to 480 x 480 (no crop) with PIL bilinear and mean/std 0.5: the original evaluation
        processor_class="BitImageProcessor",
        processor=dict(do_resize=True, size={"height": 480, "width": 480}, resample=2, do_center_crop=False,
                       crop_size={"height": 480, "width": 480}, do_rescale=True, do_normalize=True,
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True),
        # measured on random weights, transformers 5.25 and 4.57.6: logits (max |logit| ~16) within 9.5e-6 of
        # timm's on both lines; 2x that for another CPU's summation order
        atol=2e-5,
        output_divergence=OUTPUT_DIVERGENCE,
    ),
)

EVALUATION = Evaluation(
    # bit_hyperrule.get_resolution((224, 224)) = (512, 480) for imagenet2012; val_tx is
    # Resize((480, 480)) (torchvision's default bilinear), ToTensor, Normalize(0.5, 0.5): a warp, no crop.
    # The JAX/TF2 pipeline (input_pipeline_tf2_or_jax.py _pp) warps to the same size with
    # tf.image.resize (bilinear, no antialiasing) and (x - 127.5) / 127.5: PIL cannot reproduce that filter.
    source="google-research/big_transfer bit_pytorch/train.py mktrainval (val_tx) with bit_hyperrule.py "
           "get_resolution_from_dataset('imagenet2012') = (512, 480)",
    crop_size=480, warp=True, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
)

# (original unit sub-path, transformers layer sub-path)
UNIT = (("a/group_norm/gamma", "norm1.weight"), ("a/group_norm/beta", "norm1.bias"),
        ("a/standardized_conv2d/kernel", "conv1.weight"),
        ("b/group_norm/gamma", "norm2.weight"), ("b/group_norm/beta", "norm2.bias"),
        ("b/standardized_conv2d/kernel", "conv2.weight"),
        ("c/group_norm/gamma", "norm3.weight"), ("c/group_norm/beta", "norm3.bias"),
        ("c/standardized_conv2d/kernel", "conv3.weight"))
PROJECTION = ("a/proj/standardized_conv2d/kernel", "downsample.conv.weight")
KERNELS = ("resnet/root_block/standardized_conv2d/kernel", "resnet/head/conv2d/kernel",
           *(f"resnet/block{{s}}/unit{{u}}/{path}" for path in ("a/standardized_conv2d/kernel", "b/standardized_conv2d/kernel",
                                                                 "c/standardized_conv2d/kernel", PROJECTION[0])))


def _units(c):
    """(original prefix, transformers prefix, first unit of its stage) of every residual unit."""
    for s, depth in enumerate(c["depths"]):
        for u in range(depth):
            yield f"resnet/block{s + 1}/unit{u + 1:02d}/", f"bit.encoder.stages.{s}.layers.{u}.", u == 0


def plan(case: Case) -> Plan:
    c = case.config
    classes, width = c["num_labels"], c["hidden_sizes"][-1]
    renames = [Rename("resnet/root_block/standardized_conv2d/kernel", "bit.embedder.convolution.weight")]
    for source, target, first in _units(c):
        renames += [Rename(source + a, target + b) for a, b in UNIT + ((PROJECTION,) if first else ())]
    renames += [Rename("resnet/group_norm/gamma", "bit.norm.weight"), Rename("resnet/group_norm/beta", "bit.norm.bias"),
                Rename("resnet/head/conv2d/kernel", "classifier.1.weight"), Rename("resnet/head/conv2d/bias", "classifier.1.bias")]
    return Plan(renames=tuple(renames),
                ops=(*(Permute(k, HWIO_TO_OIHW) for k in KERNELS),
                     Reshape("resnet/head/conv2d/kernel", (classes, width), (classes, width, 1, 1))))


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The keys and shapes the original's loaders read (bit_pytorch/models.py load_from): HWIO kernels,
    (C,) norms; the projection in the first unit of each stage (stride or width changes there)."""
    c = case.config
    stem, classes = c["embedding_size"], c["num_labels"]
    shapes = {"resnet/root_block/standardized_conv2d/kernel": (7, 7, c.get("num_channels", 3), stem)}
    width = stem
    for (source, _, first), out in zip(_units(c), (w for w, d in zip(c["hidden_sizes"], c["depths"]) for _ in range(d))):
        mid = out // 4  # bottleneck ratio 1/4 (the original's cmid = cout // 4)
        shapes |= {source + "a/group_norm/gamma": (width,), source + "a/group_norm/beta": (width,),
                   source + "a/standardized_conv2d/kernel": (1, 1, width, mid),
                   source + "b/group_norm/gamma": (mid,), source + "b/group_norm/beta": (mid,),
                   source + "b/standardized_conv2d/kernel": (3, 3, mid, mid),
                   source + "c/group_norm/gamma": (mid,), source + "c/group_norm/beta": (mid,),
                   source + "c/standardized_conv2d/kernel": (1, 1, mid, out)}
        if first:
            shapes[source + PROJECTION[0]] = (1, 1, width, out)
        width = out
    shapes |= {"resnet/group_norm/gamma": (width,), "resnet/group_norm/beta": (width,),
               "resnet/head/conv2d/kernel": (1, 1, width, classes), "resnet/head/conv2d/bias": (classes,)}
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def npz_bytes(original) -> io.BytesIO:
    """The state dict as an in-memory `.npz`, the file format timm's loader reads."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.detach().cpu().numpy() for k, v in original.items()})
    buffer.seek(0)
    return buffer


def oracle(case: Case, original):
    """timm's BiT from timm's own BiT builder (the 'fixed' stem, StdConv2d eps 1e-8) for the case's depths,
    widths, groups and classes, its weights read from the original `.npz` by timm's `load_pretrained`."""
    from functools import partial

    from timm.layers import GroupNormAct
    from timm.models.resnetv2 import _create_resnetv2_bit

    c = case.config
    model = _create_resnetv2_bit("resnetv2_50x1_bit", layers=list(c["depths"]), width_factor=1, channels=tuple(c["hidden_sizes"]),
                                 stem_chs=c["embedding_size"], num_classes=c["num_labels"],
                                 norm_layer=partial(GroupNormAct, num_groups=c["num_groups"]))
    model.load_pretrained(npz_bytes(original))
    return model.eval()


def configurations(case: Case, tiny: bool):
    """The original's shape of network (bit_pytorch/models.py ResNetV2): four stages, a stem of width w,
    stage i of width 4w * 2**i with bottlenecks of w * 2**i, any depths; w a multiple of 8 (transformers
    rounds widths to multiples of 8) and of the GroupNorm groups; any classes."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        groups = draw(st.sampled_from([1, 2, 4, 8] if tiny else [1, 2, 4, 8, 16, 32]))
        unit = draw(st.sampled_from([w for w in range(8, (16 if tiny else 128) + 1, 8) if w % groups == 0]))
        return {"embedding_size": unit, "hidden_sizes": [4 * unit * 2**i for i in range(4)], "num_groups": groups,
                "depths": [draw(st.integers(1, 2 if tiny else 8)) for _ in range(4)],
                "num_labels": draw(st.integers(1, 16 if tiny else 2000))}

    return config()


FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    evaluation=EVALUATION,
    # two units a stage (swaps between units of one shape), 4 groups of 2 channels at the narrowest
    mutants=(Small("bit_50", {"embedding_size": 8, "hidden_sizes": [32, 64, 128, 256], "depths": [2, 2, 2, 2],
                              "num_groups": 4, "num_labels": 32}),),
)
