"""LeViT (facebookresearch/LeViT) -> LevitForImageClassificationWithTeacher.

Original files are `{"model": state_dict}` of levit.py's `LeViT` (`model_factory`, distillation on):

    patch_embed.{0,2,4,6}.{c (3x3 conv, stride 2), bn}   (the odd indices are Hardswish)
    blocks.{n}.  one flat Sequential over the three stages, in this order per stage:
        attention  Residual(Attention): m.attention_biases (heads, r²), m.attention_bias_idxs (buffer),
                   m.qkv.{c, bn}, m.proj.1.{c, bn}
        mlp        Residual(Sequential(Linear_BN, Hardswish, Linear_BN)): m.0.{c, bn}, m.2.{c, bn}
      x depth, then after each stage but the last
        subsample  AttentionSubsample: attention_biases, attention_bias_idxs (buffer), kv.{c, bn},
                   q.1.{c, bn} (q.0 is the stride-2 subsampling), proj.1.{c, bn}
        mlp        of the next stage's width
    head.{bn, l}, head_dist.{bn, l}   (BN_Linear; eval averages the two: (head + head_dist) / 2)

Every `c` is a bias-free Linear (Conv2d in the stem) and every `bn` a BatchNorm with its running
statistics and `num_batches_tracked`. transformers holds the same modules per stage
(`levit.encoder.stages.{s}.layers.{l}`, the subsample and its MLP at the end of stage s, as the
original) with `c`/`bn` named `linear`/`batch_norm`; its `attention_bias_idxs` are non-persistent
(rebuilt from the geometry), so the plan drops them and rebuilds them on the way back. The flat
index n -> (stage, layer) is arithmetic on the depths: the plan's renames are generated per block.
The names are the same on transformers 4.57 and 5.x.

The oracle is timm's `levit_*` (LevitDistilled). timm's `checkpoint_filter_fn` only drops the index
buffers: its key renaming is disabled there (timm's own weights are saved in timm's names), and the
code it left commented out paired keys by position, which is how this oracle loads the rest (same
module order, every shape checked: `_by_position`). timm groups an attention and its MLP in one
`LevitBlock` and a subsample with its MLP in a `LevitDownsample`; the oracle splits those two into
the original's residual units (`x + m(x)`, the original's `Residual`) so blocks pair one to one,
and tests/test_levit.py holds it equal to timm's own forward bit for bit.

Against the original evaluation (main.py --eval, measured with levit.py HEAD 3772b8e, random weights):
- the heads: levit.py's eval forward returns (head + head_dist) / 2, which is transformers' `logits`
  (and timm's): no difference (transformers also returns each head; tests/test_levit.py checks both);
- the model: main.py builds it with `fuse=args.eval`, folding every BatchNorm into the conv / linear
  before it (utils.replace_batchnorm): the same function rounded otherwise, 5e-5 to 1.3e-3 max abs
  on logits of magnitude 100-800 (about 1.5e-6 relative) from the unfused model that transformers,
  timm and levit.py without `fuse` compute (those three agree bit for bit).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Drop, Plan, Rename

# size -> (widths C, key dim D, heads N, depths X), levit.py `specification` (HEAD 3772b8e). Its
# drop_path (0.1 for 384) acts in training only; transformers 5's LevitConfig types drop_path_rate
# as an int and refuses 0.1, so the configs leave it at 0 (no difference in eval).
SIZES = {
    "128S": ((128, 256, 384), 16, (4, 6, 8), (2, 3, 4)),
    "128": ((128, 256, 384), 16, (4, 8, 12), (4, 4, 4)),
    "192": ((192, 288, 384), 32, (3, 5, 6), (4, 4, 4)),
    "256": ((256, 384, 512), 32, (4, 6, 8), (4, 4, 4)),
    "384": ((384, 512, 768), 32, (6, 9, 12), (4, 4, 4)),
}
# the README's model zoo links (the same URLs as levit.py's `specification`)
FILES = {"128S": "LeViT-128S-96703c44.pth", "128": "LeViT-128-b88c2750.pth", "192": "LeViT-192-92712e41.pth",
         "256": "LeViT-256-13b5763e.pth", "384": "LeViT-384-9bdaf2e2.pth"}
BASE_URL = "https://dl.fbaipublicfiles.com/LeViT"
PATCH = 16  # four stride-2 convolutions
# model_factory: attn_ratio and mlp_ratio 2 in every stage; down_ops ('Subsample', D, C_i // D, 4, 2, 2):
# a subsample with attention ratio 4, an MLP of ratio 2 after it, stride 2
SUBSAMPLE_ATTENTION_RATIO, SUBSAMPLE_MLP_RATIO, STRIDE = 4, 2, 2

PROVENANCE = Provenance(
    # facebookresearch/LeViT README.md (HEAD 3772b8e), "License": "This repository is released under the
    # Apache 2.0 license as found in the LICENSE file"; its Model Zoo links the weights and states no other terms.
    licence="apache-2.0",
    licence_statement="The LeViT repository, its code and the weights its README links, is released under the "
                      "Apache 2.0 license (its README and LICENSE state no separate terms for the weights).",
    licence_source="facebookresearch/LeViT README.md (License, Model Zoo) and LICENSE",
    repository="https://github.com/facebookresearch/LeViT",
    papers={"2104.01136": "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference"},
    datasets=("imagenet-1k",),  # README: "LeViT models trained with distillation on ImageNet 2012"
)


def _case(size: str) -> Case:
    widths, key_dim, heads, depths = SIZES[size]
    return Case(
        id=f"levit_{size.lower()}",
        family="levit",
        hub_name=f"levit-{size}",
        published_repo=f"facebook/levit-{size}",  # transformers' convert_levit_timm_to_pytorch.py pushed them there
        url=f"{BASE_URL}/{FILES[size]}",
        timm_tag=f"levit_{size.lower()}.fb_dist_in1k",
        config_class="LevitConfig",
        config=dict(image_size=224, patch_size=PATCH, hidden_sizes=list(widths), num_attention_heads=list(heads),
                    depths=list(depths), key_dim=[key_dim] * 3, attention_ratio=[2, 2, 2], mlp_ratio=[2, 2, 2],
                    num_labels=1000),
        model_class="LevitForImageClassificationWithTeacher",
        output="logits",
        # the original evaluation (`evaluation` below): ConvNeXt's processor resizes the short side to
        # int(224 / 0.875) = 256 and centre-crops 224, as LevitImageProcessor (the published repos') does
        # with shortest_edge 224; converters/pixels.py models ConvNeXt's (tests/test_levit.py: same pixels)
        processor_class="ConvNextImageProcessor",
        processor=dict(do_resize=True, size={"shortest_edge": 224}, crop_pct=224 / 256, resample=3,  # PIL bicubic
                       do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                       do_convert_rgb=True),
        # measured on random weights (logits of magnitude 100-800), every case, transformers 5.25 and
        # 4.57.6: 0.0 against timm (the same operations in the same order), and 0.0 as loaded (PIL)
        atol=1e-6,
        params=dict(size=size.lower()),
    )


CASES = tuple(_case(size) for size in SIZES)

evaluation = Evaluation(
    # datasets.py build_transform(is_train=False), input_size 224 (main.py's default):
    # Resize(int((256 / 224) * 224), interpolation=3), CenterCrop(224), ToTensor, Normalize(ImageNet)
    source="facebookresearch/LeViT datasets.py build_transform(is_train=False)",
    crop_size=224, shortest_edge=int((256 / 224) * 224), interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)


# --------------------------------------------------------------------------- geometry


class Unit(NamedTuple):
    """One element of the original's flat `blocks`."""

    kind: str  # attention, mlp or subsample
    stage: int  # the stage transformers holds it in (a subsample and its MLP: the stage they end)
    layer: int  # its index within that stage
    width: int  # its output width (a subsample's: the next stage's)
    resolution: int  # of its input map
    resolution_out: int
    ratio: int  # attention: value dim / key dim; mlp: hidden / width


def units(c) -> list[Unit]:
    """The original's `blocks`, in order (levit.py `LeViT.__init__`)."""
    out, resolution = [], c["image_size"] // c["patch_size"]
    for s, (width, depth) in enumerate(zip(c["hidden_sizes"], c["depths"])):
        layers = [("attention", width, resolution, resolution, c["attention_ratio"][s]),
                  ("mlp", width, resolution, resolution, c["mlp_ratio"][s])] * depth
        if s < len(c["depths"]) - 1:
            smaller, wider = (resolution - 1) // STRIDE + 1, c["hidden_sizes"][s + 1]
            layers += [("subsample", wider, resolution, smaller, SUBSAMPLE_ATTENTION_RATIO),
                       ("mlp", wider, smaller, smaller, SUBSAMPLE_MLP_RATIO)]
            resolution = smaller
        out += [Unit(kind, s, layer, *rest) for layer, (kind, *rest) in enumerate(layers)]
    return out


def attention_bias_idxs(resolution: int, resolution_out: int, stride: int) -> torch.Tensor:
    """The original's `attention_bias_idxs` buffer: for each query point (on the stride grid) and key
    point, the index of their offset (|dy|, |dx|) in the order levit.py first meets it, which is
    |dy| * resolution + |dx| (its first query point, (0, 0), meets every offset in that order)."""
    keys = torch.stack(torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")).flatten(1)
    grid = torch.arange(resolution_out) * stride
    queries = torch.stack(torch.meshgrid(grid, grid, indexing="ij")).flatten(1)
    offset = (queries[:, :, None] - keys[:, None, :]).abs()
    return offset[0] * resolution + offset[1]


# --------------------------------------------------------------------------- plan

# original module of a unit -> transformers module, per kind (each a Linear_BN: `c`, `bn`)
MODULES = {
    "attention": (("m.qkv.", "module.queries_keys_values."), ("m.proj.1.", "module.projection.")),
    "mlp": (("m.0.", "module.linear_up."), ("m.2.", "module.linear_down.")),
    "subsample": (("kv.", "keys_values."), ("q.1.", "queries."), ("proj.1.", "projection.")),
}
BIASES = {"attention": "m.", "subsample": ""}  # where a unit's attention_biases and index buffer sit


def plan(case: Case) -> Plan:
    renames, index_of = [], {}
    for n, unit in enumerate(units(case.config)):
        ours, theirs = f"blocks.{n}.", f"levit.encoder.stages.{unit.stage}.layers.{unit.layer}."
        for original, target in MODULES[unit.kind]:
            renames += [Rename(ours + original + "c.", theirs + target + "linear."),
                        Rename(ours + original + "bn.", theirs + target + "batch_norm.")]
        if unit.kind in BIASES:
            inner = "module." if unit.kind == "attention" else ""
            renames.append(Rename(ours + BIASES[unit.kind] + "attention_biases", theirs + inner + "attention_biases"))
            index_of[n] = (unit.resolution, unit.resolution_out, STRIDE if unit.kind == "subsample" else 1)
    stem = tuple(Rename(f"patch_embed.{2 * i}.{a}.", f"levit.patch_embeddings.embedding_layer_{i + 1}.{b}.")
                 for i in range(4) for a, b in (("c", "convolution"), ("bn", "batch_norm")))
    heads = tuple(Rename(f"{head}.{a}.", f"{target}.{b}.") for head, target in (("head", "classifier"),
                  ("head_dist", "classifier_distill")) for a, b in (("bn", "batch_norm"), ("l", "linear")))
    rebuild = lambda g, state: attention_bias_idxs(*index_of[int(g["n"])])  # noqa: E731
    return Plan(renames=stem + tuple(renames) + heads,
                ops=(Drop("blocks.{n}.m.attention_bias_idxs", restore=rebuild),
                     Drop("blocks.{n}.attention_bias_idxs", restore=rebuild)))


# --------------------------------------------------------------------------- original layout


def _linear_bn(prefix: str, out: int, shape: tuple) -> dict:
    """A Linear_BN / Conv2d_BN: the bias-free `c` then `bn` with its statistics (state dict order)."""
    return {prefix + "c.weight": shape, **{prefix + f"bn.{k}": (out,) for k in ("weight", "bias", "running_mean", "running_var")},
            prefix + "bn.num_batches_tracked": ()}


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The original LeViT's state dict, key for key and in its order: meta tensors, except the
    index buffers the original computes (real)."""
    c = case.config
    widths, key_dim = c["hidden_sizes"], c["key_dim"][0]
    shapes: dict = {}
    stem = (3, widths[0] // 8, widths[0] // 4, widths[0] // 2, widths[0])
    for i in range(4):
        shapes |= _linear_bn(f"patch_embed.{2 * i}.", stem[i + 1], (stem[i + 1], stem[i], 3, 3))
    for n, u in enumerate(units(c)):
        p = f"blocks.{n}."
        if u.kind == "attention":
            h = c["num_attention_heads"][u.stage]
            qkv, values = h * (u.ratio + 2) * key_dim, h * u.ratio * key_dim
            shapes[p + "m.attention_biases"] = (h, u.resolution**2)
            shapes[p + "m.attention_bias_idxs"] = attention_bias_idxs(u.resolution, u.resolution_out, 1)
            shapes |= _linear_bn(p + "m.qkv.", qkv, (qkv, u.width)) | _linear_bn(p + "m.proj.1.", u.width, (u.width, values))
        elif u.kind == "mlp":
            hidden = u.width * u.ratio
            shapes |= _linear_bn(p + "m.0.", hidden, (hidden, u.width)) | _linear_bn(p + "m.2.", u.width, (u.width, hidden))
        else:  # subsample from the stage's width to the next's, with C_s // D heads
            width_in = widths[u.stage]
            h = width_in // key_dim
            kv, values = h * (u.ratio + 1) * key_dim, h * u.ratio * key_dim
            shapes[p + "attention_biases"] = (h, u.resolution**2)
            shapes[p + "attention_bias_idxs"] = attention_bias_idxs(u.resolution, u.resolution_out, STRIDE)
            shapes |= (_linear_bn(p + "kv.", kv, (kv, width_in)) | _linear_bn(p + "q.1.", h * key_dim, (h * key_dim, width_in))
                       | _linear_bn(p + "proj.1.", u.width, (u.width, values)))
    for head in ("head", "head_dist"):
        shapes |= {f"{head}.bn.{k}": (widths[-1],) for k in ("weight", "bias", "running_mean", "running_var")}
        shapes |= {f"{head}.bn.num_batches_tracked": (), f"{head}.l.weight": (c["num_labels"], widths[-1]),
                   f"{head}.l.bias": (c["num_labels"],)}
    return {k: s if isinstance(s, torch.Tensor) else
            torch.empty(s, device="meta", dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in shapes.items()}


# --------------------------------------------------------------------------- oracle


def _by_position(state: dict, model) -> dict:
    """The original's tensors under timm's names, paired in module order (the original and timm
    define the same modules in the same order; timm's filter left this pairing commented out):
    every shape must agree, or no oracle."""
    theirs = model.state_dict()
    wrong = [f"{a} {tuple(state[a].shape)} vs {b} {tuple(v.shape)}" for a, (b, v) in zip(state, theirs.items())
             if tuple(state[a].shape) != tuple(v.shape)]
    if len(state) != len(theirs) or wrong:
        raise ValueError(f"LeViT oracle: {len(state)} original tensors against timm's {len(theirs)}; "
                         f"shapes that differ in module order: {wrong[:3]}")
    return dict(zip(theirs, state.values()))


class Residual(torch.nn.Module):
    """x + m(x) around one of timm's modules: the original's `Residual` (levit.py), which is what
    timm's LevitBlock and LevitDownsample do around their parts (drop path is the identity in eval)."""

    def __init__(self, m: torch.nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return x + self.m(x)


def regrouped(model):
    """timm's LeViT with each LevitBlock split into its attention and MLP residual units and each
    LevitDownsample into its subsample and MLP unit, in place: the original's units, so that its
    blocks pair one to one with transformers' layers; every module and the forward stay timm's."""
    from timm.models.levit import LevitDownsample

    for stage in model.stages:
        if isinstance(stage.downsample, LevitDownsample):
            stage.downsample = torch.nn.Sequential(stage.downsample.attn_downsample, Residual(stage.downsample.mlp))
        for k, block in enumerate(stage.blocks):
            stage.blocks[k] = torch.nn.Sequential(Residual(block.attn), Residual(block.mlp))
    return model.eval()


def timm_levit(case: Case, original):
    """timm's LevitDistilled for the case's geometry, given the original tensors through timm's own
    `checkpoint_filter_fn` (which drops the index buffers) and then by position."""
    from timm.models.levit import checkpoint_filter_fn

    from ..reference import timm_model

    c = case.config
    return timm_model(f"levit_{case.params['size']}", original,
                      lambda state, model: _by_position(checkpoint_filter_fn(state, model), model),
                      img_size=c["image_size"], embed_dim=tuple(c["hidden_sizes"]), key_dim=c["key_dim"][0],
                      num_heads=tuple(c["num_attention_heads"]), depth=tuple(c["depths"]),
                      attn_ratio=tuple(c["attention_ratio"]), mlp_ratio=tuple(c["mlp_ratio"]), num_classes=c["num_labels"])


def oracle(case: Case, original):
    return regrouped(timm_levit(case, original))


def configurations(case: Case, tiny: bool):
    """Three stages (transformers derives exactly two subsamples), one key dim for all (the
    original's [D] * 3; the subsamples use C_i // D heads), widths a multiple of 8 (the stem's
    C/8, C/4, C/2) and of D, heads, depths, attention and MLP ratios per stage, classes, and an
    image side a multiple of the patch (16)."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        key_dim = draw(st.sampled_from([4, 8] if tiny else [8, 16, 32]))
        step = max(8, key_dim)
        widths = [step * draw(st.integers(1, 3 if tiny else 24)) for _ in range(3)]
        ints = lambda hi: [draw(st.integers(1, hi)) for _ in range(3)]  # noqa: E731
        return {"hidden_sizes": widths, "key_dim": [key_dim] * 3, "num_attention_heads": ints(2 if tiny else 12),
                "depths": ints(2 if tiny else 4), "attention_ratio": ints(2 if tiny else 4), "mlp_ratio": ints(2 if tiny else 4),
                "image_size": PATCH * draw(st.integers(1, 4 if tiny else 16)),
                "num_labels": draw(st.integers(1, 16 if tiny else 2000))}

    return config()


FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    unwrap=("model",),
    # one attention and MLP unit per stage; 80 px: maps 5, 3, 2 (a 1x1 map would make every
    # attention of its stage a constant and hide swapped tensors there)
    mutants=(Small("levit_128s", {"image_size": 80, "hidden_sizes": [16, 24, 32], "key_dim": [8, 8, 8],
                                  "num_attention_heads": [2, 3, 4], "depths": [1, 1, 1], "num_labels": 32},
                   image_size=80),),
)
