"""PVT v2 (whai362/PVT, classification/pvt_v2.py) -> PvtV2ForImageClassification.

The released files (the README's GitHub release links) are plain state dicts; the original's loader
(classification/main.py, `--resume`) takes `checkpoint['model']` when present, else the file itself,
and so does `unwrap`. Per stage s = 1..4 (`PyramidVisionTransformerV2`, modules set in this order):

    patch_embed{s}.{proj (7x7 stride 4, then 3x3 stride 2), norm},
    block{s}.{j}.{norm1, attn.q, attn.kv (fused k, v), attn.proj, attn.sr + attn.norm, norm2,
                  mlp.fc1, mlp.dwconv.dwconv, mlp.fc2},
    norm{s}; then head

`attn.sr` (a conv of kernel and stride sr_ratio) and `attn.norm` exist where sr_ratio > 1 and in
every block of the linear variant (b2_li: a 1x1 conv after a 7x7 adaptive average pool), a layout of
its own. transformers holds stage s - 1 under `pvt_v2.encoder.layers.{s-1}.` with the same module
tree under other names on both lines; `kv` splits into `key` and `value`. The oracle is timm's
`pvt_v2_*` through timm's own `checkpoint_filter_fn` (patch_embed2..4 -> stages.1..3.downsample).
"""

from __future__ import annotations

import torch

from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Plan, Rename, Split

RELEASES = "https://github.com/whai362/PVT/releases/download/v2"
B2 = dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3])
# case -> (original file, config), from classification/pvt_v2.py's `pvt_v2_b*` constructors; ids are
# the names transformers' conversion (convert_pvt_v2_to_pytorch.py) published under OpenGVLab/.
PUBLISHED = {
    "pvt_v2_b0": ("pvt_v2_b0.pth", dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2])),
    "pvt_v2_b1": ("pvt_v2_b1.pth", dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2])),
    "pvt_v2_b2": ("pvt_v2_b2.pth", B2),
    "pvt_v2_b2_linear": ("pvt_v2_b2_li.pth", dict(B2, linear_attention=True)),
    "pvt_v2_b3": ("pvt_v2_b3.pth", dict(B2, depths=[3, 4, 18, 3])),
    "pvt_v2_b4": ("pvt_v2_b4.pth", dict(B2, depths=[3, 8, 27, 3])),
    "pvt_v2_b5": ("pvt_v2_b5.pth", dict(B2, depths=[3, 6, 40, 3], mlp_ratios=[4, 4, 4, 4])),
}
# what every constructor shares: heads, spatial reduction, patch embeddings, LayerNorm eps 1e-6, qkv bias
COMMON = dict(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], mlp_ratios=[8, 8, 4, 4], patch_sizes=[7, 3, 3, 3],
              strides=[4, 2, 2, 2], num_encoder_blocks=4, layer_norm_eps=1e-6, qkv_bias=True, linear_attention=False, image_size=224, num_labels=1000)

# measured on random weights (fan-in scaled), 224 px, transformers 5.25: timm as built (the original's eps)
# agrees with the original code to 9.5e-7 in logits (b0, b1, b2_linear); the converted model is 1.4e-5 to 2.0e-5
# off it (b0-b5; b2_linear 2.8e-5), and 0.95e-6 to 1.55e-6 once timm's 1e-5 norms take 1e-6
OUTPUT_DIVERGENCE = (
    "the original builds its patch-embedding and spatial-reduction LayerNorms with torch's default eps 1e-5 and "
    "every other LayerNorm with 1e-6; PvtV2Config has one layer_norm_eps (1e-6) for all of them, so the outputs "
    "differ slightly from the original's (on random weights 1.4e-5 to 2.0e-5 in logits of magnitude ~4 for b0-b5, "
    "2.8e-5 for b2_linear); no transformers setting reproduces both eps"
)

PROVENANCE = Provenance(
    # whai362/PVT README.md (HEAD 57e2dfa) "License": "released under the Apache 2.0 license as found in
    # the LICENSE file" (LICENSE: Apache License 2.0); classification/README.md links the weights with no other terms.
    licence="apache-2.0",
    licence_statement="The PVT code and its released weights are under the Apache License 2.0 (the repository's "
                      "LICENSE; its READMEs state no separate terms for the weights).",
    licence_source="whai362/PVT README.md (License) and LICENSE",
    repository="https://github.com/whai362/PVT",
    papers={"2106.13797": "PVT v2: Improved Baselines with Pyramid Vision Transformer"},
    datasets=("imagenet-1k",),
)


def _case(name: str, file: str, overrides: dict) -> Case:
    timm_name = "pvt_v2_b2_li" if overrides.get("linear_attention") else name
    return Case(
        id=name,
        family="pvt_v2",
        hub_name=name,
        published_repo=f"OpenGVLab/{name}",
        url=f"{RELEASES}/{file}",  # classification/README.md's [GitHub] links
        timm_tag=f"{timm_name}.in1k",  # timm's copy of the same release, remapped
        config_class="PvtV2Config",
        config={**COMMON, **overrides},
        model_class="PvtV2ForImageClassification",
        output="logits",
        # the original evaluation (`evaluation` below): short side 256, centre crop 224. The published
        # repos' PvtImageProcessor squashes the image to 224 x 224 instead.
        processor_class="ConvNextImageProcessor",
        processor=dict(do_resize=True, size={"shortest_edge": 224}, crop_pct=224 / 256, resample=3,  # PIL bicubic
                       do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True),
        # measured on random weights, every case, transformers 5.25: logits within 0.95e-6 to 1.55e-6 of the oracle's
        atol=3e-6,
        params=dict(timm_name=timm_name),
        output_divergence=OUTPUT_DIVERGENCE,
        # b2_linear, its layout's only case (22.6M parameters), cost 25 of the family's 50 CPU s of the default
        # run (transformers 5.25): its real-size forward checks run in full; at small size its layout is in
        # the default run's mutation, block parity and property tests, and its key coverage and pixels at full size
        marks=("large",) if overrides.get("linear_attention") else (),
    )


CASES = tuple(_case(name, file, overrides) for name, (file, overrides) in PUBLISHED.items())

# whai362/PVT classification/datasets.py build_transform(is_train=False): Resize(int((256 / 224) * input_size),
# interpolation=3 (bicubic)), CenterCrop(input_size), ToTensor, Normalize(timm's IMAGENET_DEFAULT_MEAN/STD);
# input_size 224 (main.py's default, every released model)
EVALUATION = Evaluation(source="whai362/PVT classification/datasets.py build_transform(is_train=False)", crop_size=224,
                        shortest_edge=int(256 / 224 * 224), interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)


# --------------------------------------------------------------------------- plan


def _reduces(c, i: int) -> bool:
    """Whether stage i's attention has its spatial reduction (`sr` conv and `norm`)."""
    return bool(c.get("linear_attention")) or c["sr_ratios"][i] > 1


def plan(case: Case) -> Plan:
    renames, ops = [], []
    for i in range(len(case.config["depths"])):
        block, layer = f"block{i + 1}.{{j}}.", f"pvt_v2.encoder.layers.{i}.blocks.{{j}}."
        ops += [Split(f"{block}attn.kv.{entry}", (f"{block}attn.key.{entry}", f"{block}attn.value.{entry}"))
                for entry in ("weight", "bias")]
        renames += [
            Rename(f"patch_embed{i + 1}.proj.", f"pvt_v2.encoder.layers.{i}.patch_embedding.proj."),
            Rename(f"patch_embed{i + 1}.norm.", f"pvt_v2.encoder.layers.{i}.patch_embedding.layer_norm."),
            Rename(f"{block}norm1.", f"{layer}layer_norm_1."),
            Rename(f"{block}attn.q.", f"{layer}attention.query."),
            Rename(f"{block}attn.sr.", f"{layer}attention.spatial_reduction."),
            Rename(f"{block}attn.norm.", f"{layer}attention.layer_norm."),
            Rename(f"{block}attn.", f"{layer}attention."),  # key, value, proj
            Rename(f"{block}norm2.", f"{layer}layer_norm_2."),
            Rename(f"{block}mlp.fc1.", f"{layer}mlp.dense1."),
            Rename(f"{block}mlp.fc2.", f"{layer}mlp.dense2."),
            Rename(f"{block}mlp.", f"{layer}mlp."),  # dwconv.dwconv
            Rename(f"norm{i + 1}.", f"pvt_v2.encoder.layers.{i}.layer_norm."),
        ]
    return Plan(renames=(*renames, Rename("head.", "classifier.")), ops=tuple(ops))


# --------------------------------------------------------------------------- original layout


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The original PyramidVisionTransformerV2's state dict, key for key, as meta tensors."""
    c = case.config
    shapes: dict = {}
    previous = c.get("num_channels", 3)
    for i, (width, depth) in enumerate(zip(c["hidden_sizes"], c["depths"])):
        patch, sr = c["patch_sizes"][i], 1 if c.get("linear_attention") else c["sr_ratios"][i]
        hidden = int(width * c["mlp_ratios"][i])
        shapes |= {f"patch_embed{i + 1}.proj.weight": (width, previous, patch, patch), f"patch_embed{i + 1}.proj.bias": (width,),
                   f"patch_embed{i + 1}.norm.weight": (width,), f"patch_embed{i + 1}.norm.bias": (width,)}
        for j in range(depth):
            p = f"block{i + 1}.{j}."
            shapes |= {p + "norm1.weight": (width,), p + "norm1.bias": (width,),
                       p + "attn.q.weight": (width, width), p + "attn.q.bias": (width,),
                       p + "attn.kv.weight": (2 * width, width), p + "attn.kv.bias": (2 * width,),
                       p + "attn.proj.weight": (width, width), p + "attn.proj.bias": (width,)}
            if _reduces(c, i):
                shapes |= {p + "attn.sr.weight": (width, width, sr, sr), p + "attn.sr.bias": (width,),
                           p + "attn.norm.weight": (width,), p + "attn.norm.bias": (width,)}
            shapes |= {p + "norm2.weight": (width,), p + "norm2.bias": (width,),
                       p + "mlp.fc1.weight": (hidden, width), p + "mlp.fc1.bias": (hidden,),
                       p + "mlp.dwconv.dwconv.weight": (hidden, 1, 3, 3), p + "mlp.dwconv.dwconv.bias": (hidden,),
                       p + "mlp.fc2.weight": (width, hidden), p + "mlp.fc2.bias": (width,)}
        shapes |= {f"norm{i + 1}.weight": (width,), f"norm{i + 1}.bias": (width,)}
        previous = width
    shapes |= {"head.weight": (c["num_labels"], previous), "head.bias": (c["num_labels"],)}
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# --------------------------------------------------------------------------- oracle


def oracle(case: Case, original, original_eps: bool = False):
    """timm's PVT v2 for the case's config, loaded through timm's own `checkpoint_filter_fn` (timm fixes
    the patch embeddings at 7/4 then 3/2, as the original). timm keeps the original's two LayerNorm eps;
    unless `original_eps`, its patch-embedding and reduction norms take transformers' one eps instead
    (`OUTPUT_DIVERGENCE`), so that the logits check isolates the weight conversion."""
    from timm.models.pvt_v2 import checkpoint_filter_fn

    from ..reference import timm_model

    c = case.config
    model = timm_model(case.params["timm_name"], original, checkpoint_filter_fn, depths=tuple(c["depths"]),
                       embed_dims=tuple(c["hidden_sizes"]), num_heads=tuple(c["num_attention_heads"]),
                       sr_ratios=tuple(c["sr_ratios"]), mlp_ratios=tuple(c["mlp_ratios"]),
                       linear=bool(c.get("linear_attention")), num_classes=c["num_labels"])
    if not original_eps:
        for module in original_eps_norms(model).values():
            module.eps = c["layer_norm_eps"]
    return model


def original_eps_norms(model) -> dict:
    """timm's LayerNorms that keep torch's default eps (1e-5) as the original's `nn.LayerNorm(dim)` do:
    the patch embeddings' (`patch_embed`, `stages.{i}.downsample`) and the spatial reductions' (`attn.norm`)."""
    return {name: module for name, module in model.named_modules()
            if name.endswith(("patch_embed.norm", "downsample.norm", "attn.norm"))}


def configurations(case: Case, tiny: bool):
    """Any number of stages (1-4), depths, heads x head size, MLP ratios and spatial reductions per
    stage, and classes, for the case's attention (linear or not). The patch embeddings stay at the
    original's 7/4 then 3/2 (timm's are fixed), and the image is large enough that every reduced map
    is at least one token (a reduction larger than its map is an error in every implementation)."""
    from hypothesis import strategies as st

    linear = bool(case.config.get("linear_attention"))

    @st.composite
    def config(draw):
        stages = draw(st.integers(1, 4))
        heads = [draw(st.integers(1, 2 if tiny else 8)) for _ in range(stages)]
        head = draw(st.integers(1, 4 if tiny else 64))
        sr = [draw(st.integers(1, 2 if tiny else 8)) for _ in range(stages)]
        grid = max(s * 2 ** (stages - 1 - i) for i, s in enumerate(sr))  # the first stage's map, in tokens
        return {"depths": [draw(st.integers(1, 2 if tiny else 4)) for _ in range(stages)], "num_attention_heads": heads,
                "hidden_sizes": [h * head for h in heads], "sr_ratios": sr,
                "mlp_ratios": [draw(st.integers(1, 2 if tiny else 8)) for _ in range(stages)],
                "patch_sizes": [7, 3, 3, 3][:stages], "strides": [4, 2, 2, 2][:stages], "num_encoder_blocks": stages,
                "linear_attention": linear,
                "image_size": 4 * grid, "num_labels": draw(st.integers(1, 16 if tiny else 2000))}

    return config()


FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    evaluation=EVALUATION,
    unwrap=("model",),
    # both layouts at 64 px: maps of 16, 8, 4, 2 tokens, reduced by 8, 4, 2, 1 (or pooled to 7 x 7)
    mutants=tuple(Small(case, {"hidden_sizes": [8, 16, 40, 64], "depths": [2, 2, 2, 2], "num_labels": 32,
                               "image_size": 64}) for case in ("pvt_v2_b0", "pvt_v2_b2_linear")),
)
