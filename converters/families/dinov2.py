"""DINOv2 (facebookresearch/dinov2) -> Dinov2Model, Dinov2WithRegistersModel and, with its
ImageNet-1k linear head, Dinov2ForImageClassification.

Original files are plain state dicts (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`):

    cls_token (1, 1, D), pos_embed (1, 1 + 37 * 37, D) for 518 px, mask_token (1, D),
    register_tokens (1, 4, D) in the _reg4 files, patch_embed.proj (patch 14),
    blocks.{i}.{norm1, attn.qkv (fused q, k, v; weight and bias), attn.proj, ls1.gamma, norm2,
    mlp.fc1, mlp.fc2 | mlp.w12 (fused SwiGLU gate and up), mlp.w3, ls2.gamma}, norm

The `_linear` cases are two files: the backbone and `dinov2_vit{X}14_linear_head.pth` (`weight`
(1000, 2D), `bias`), a linear layer on the class token concatenated with the mean of the patch
tokens; its keys enter the original state under `linear_head.` (`Case.extra_files`).

Position embeddings are stored for 518 px and interpolated (bicubic) at any other size, each
implementation its own way (tests/test_dinov2.py measures each pair at 518 and 224):
- the original code: plain models scale the grid by (new + 0.1) / old, no antialias; register
  models (as its hub entry points build them) resize to the new grid with antialias;
- transformers: Dinov2 resizes to the new grid without antialias, Dinov2WithRegisters with;
- timm: resizes at load (or at run time) with antialias unless told otherwise.
So transformers reproduces the original evaluation exactly for the register models and cannot
for the plain ones at 224 (`OUTPUT_DIVERGENCE`, measured, stated in the case); at 518 all agree.
The logits check's oracle is timm resampling as transformers does (antialias only for register
models): it isolates the weight conversion, and the divergence is stated, not hidden in a tolerance.
"""

from __future__ import annotations

import torch

from .. import vit_blocks
from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Line, Plan, Rename, Split

# size -> (embed dim, depth, heads, SwiGLU MLP), from the original hub entry points (vit_small .. vit_giant2)
SIZES = {
    "s": (384, 12, 6, False),
    "b": (768, 12, 12, False),
    "l": (1024, 24, 16, False),
    "g": (1536, 40, 24, True),
}
NAMES = {"s": "small", "b": "base", "l": "large", "g": "giant"}
PATCH, STORED, EVAL = 14, 518, 224  # the position embeddings are stored for 518 px, evaluated at 224
REGISTERS = 4
BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
KINDS = ("", "_reg4", "_linear")
MODEL_CLASS = {"": "Dinov2Model", "_reg4": "Dinov2WithRegistersModel", "_linear": "Dinov2ForImageClassification"}
HEAD = "linear_head"  # the part name of the linear-head file, and its keys' prefix

# Measured with random weights, tests/test_dinov2.py.
OUTPUT_DIVERGENCE = (
    "transformers' Dinov2 resizes the 518-px position embeddings to the 224-px grid (16x16) by size; "
    "the original evaluation scales the grid by (16 + 0.1) / 37: the position embeddings differ and so "
    "do the outputs at 224 (not at 518; on random weights up to 1.47 in last_hidden_state of magnitude ~6, "
    "0.07 in logits); no transformers setting reproduces the original scale factor"
)


PROVENANCE = Provenance(
    # facebookresearch/dinov2 README.md, "## License" (HEAD b8931f7): "DINOv2 code and model weights are released
    # under the Apache License 2.0."; MODEL_CARD.md: "License: Apache License 2.0" (CC-BY-NC until commit 81b2b64,
    # 2023-08-31, "Update license everywhere").
    licence="apache-2.0",
    licence_statement="DINOv2 code and model weights are released under the Apache License 2.0.",
    licence_source="facebookresearch/dinov2 README.md (## License), LICENSE and MODEL_CARD.md",
    repository="https://github.com/facebookresearch/dinov2",
    papers={"2304.07193": "DINOv2: Learning Robust Visual Features without Supervision"},
    # MODEL_CARD.md: "Training data: LVD-142M (see paper)", never released
    unlisted_data=("LVD-142M: 142 million curated images (not on the Hub, not released)",),
)
REGISTERS_PAPER = {"2309.16588": "Vision Transformers Need Registers"}


def _case(size: str, kind: str) -> Case:
    dim, depth, heads, swiglu = SIZES[size]
    config = dict(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=4,
                  image_size=STORED, patch_size=PATCH, use_swiglu_ffn=swiglu, layerscale_value=1.0,
                  layer_norm_eps=1e-6)  # the original's LayerNorms use eps 1e-6
    if kind == "_reg4":
        config["num_register_tokens"] = REGISTERS
    if kind == "_linear":
        config["num_labels"] = 1000
    name = f"dinov2_vit{size}14"
    hub = {"": f"dinov2-{NAMES[size]}", "_reg4": f"dinov2-with-registers-{NAMES[size]}",
           "_linear": f"dinov2-{NAMES[size]}-imagenet1k-1-layer"}[kind]
    return Case(
        id=f"{name}{kind}",
        family="dinov2",
        hub_name=hub,
        published_repo=f"facebook/{hub}",  # facebookresearch's own uploads of the same checkpoints
        url=f"{BASE_URL}/{name}/{name}{'_reg4' if kind == '_reg4' else ''}_pretrain.pth",
        extra_files={HEAD: f"{BASE_URL}/{name}/{name}_linear_head.pth"} if kind == "_linear" else {},
        config_class="Dinov2WithRegistersConfig" if kind == "_reg4" else "Dinov2Config",
        config=config,
        model_class=MODEL_CLASS[kind],
        output="logits" if kind == "_linear" else "last_hidden_state",
        # The original evaluation (dinov2/data/transforms.py, make_classification_eval_transform):
        # short side to 256, bicubic, centre crop 224, ImageNet mean/std.
        processor_class="BitImageProcessor",
        processor=dict(
            do_resize=True,
            size={"shortest_edge": 256},
            resample=3,  # PIL bicubic
            do_center_crop=True,
            crop_size={"height": EVAL, "width": EVAL},
            do_normalize=True,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
            do_convert_rgb=True,
        ),
        atol=1e-5,
        # ViT-L: ~45 s of one of two cores per case (its logits check alone 16-19 s), three cases as
        # much as the whole ConvNeXt-V2 matrix's third; giant: 1.1B parameters (4.5 GB of fp32) a
        # model. Both nightly, with -m large, or by full case id with -k.
        marks=("large",) if size in ("l", "g") else (),
        params=dict(size=size, kind=kind),
        output_divergence=None if kind == "_reg4" else OUTPUT_DIVERGENCE,
        # register models: their own paper too (README, MODEL_CARD BibTeX); linear heads (README "Pretrained
        # heads - Image classification"): trained on ImageNet-1k over the frozen backbone
        provenance={"_reg4": {"papers": {**PROVENANCE.papers, **REGISTERS_PAPER}},
                    "_linear": {"datasets": ("imagenet-1k",)}}.get(kind, {}),
    )


CASES = tuple(_case(size, kind) for kind in KINDS for size in SIZES)


# --------------------------------------------------------------------------- plan


def _mlp_hidden(c) -> int:
    """The MLP's hidden width: transformers' and the original's formula (SwiGLU keeps 2/3 of it,
    rounded up to a multiple of 8)."""
    hidden = int(c["hidden_size"] * c.get("mlp_ratio", 4))
    return (int(hidden * 2 / 3) + 7) // 8 * 8 if c.get("use_swiglu_ffn") else hidden


def plan(case: Case) -> Plan:
    classifies = case.params["kind"] == "_linear"
    prefix = "dinov2." if classifies else ""  # the backbone's place in the classifier
    layer = prefix + "encoder.layer.{i}."
    renames = [
        Rename("cls_token", prefix + "embeddings.cls_token"),
        Rename("mask_token", prefix + "embeddings.mask_token"),
        Rename("register_tokens", prefix + "embeddings.register_tokens"),
        Rename("pos_embed", prefix + "embeddings.position_embeddings"),
        Rename("patch_embed.proj.", prefix + "embeddings.patch_embeddings.projection."),
        Rename("blocks.{i}.norm1.", layer + "norm1."),
        Rename("blocks.{i}.norm2.", layer + "norm2."),
        Rename("blocks.{i}.ls1.gamma", layer + "layer_scale1.lambda1"),
        Rename("blocks.{i}.ls2.gamma", layer + "layer_scale2.lambda1"),
        Rename("blocks.{i}.mlp.fc1.", layer + "mlp.fc1."),
        Rename("blocks.{i}.mlp.fc2.", layer + "mlp.fc2."),
        Rename("norm.", prefix + "layernorm."),
        Rename(f"{HEAD}.", "classifier."),
    ]
    # transformers 5 holds DINOv2's attention as q/k/v/o_proj and its SwiGLU as separate gate, up
    # and down projections in memory (its files keep the 4.x names)
    line5 = Line(
        renames=(*vit_blocks.projections("blocks.{i}.", layer),
                 Rename("blocks.{i}.mlp.gate.", layer + "mlp.gate_proj."),
                 Rename("blocks.{i}.mlp.up.", layer + "mlp.up_proj."),
                 Rename("blocks.{i}.mlp.w3.", layer + "mlp.down_proj.")),
        # the fused SwiGLU input projection: its first half gates (silu), the second is multiplied
        ops=tuple(Split(f"blocks.{{i}}.mlp.w12.{entry}", (f"blocks.{{i}}.mlp.gate.{entry}", f"blocks.{{i}}.mlp.up.{entry}"))
                  for entry in ("weight", "bias")))
    line4 = Line(renames=(*vit_blocks.attention("blocks.{i}.", layer),
                          Rename("blocks.{i}.mlp.w12.", layer + "mlp.weights_in."),
                          Rename("blocks.{i}.mlp.w3.", layer + "mlp.weights_out.")))
    return Plan(renames=tuple(renames), ops=vit_blocks.split_qkv(), by_line={5: line5, 4: line4})


# --------------------------------------------------------------------------- original layout


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The original DinoVisionTransformer's state dict (and the linear head), key for key, on the
    meta device."""
    c = case.config
    dim, depth, patch = c["hidden_size"], c["num_hidden_layers"], c["patch_size"]
    grid = c["image_size"] // patch
    hidden = _mlp_hidden(c)
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim)}
    if c.get("num_register_tokens"):
        shapes["register_tokens"] = (1, c["num_register_tokens"], dim)
    shapes |= {"mask_token": (1, dim), "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}."
        shapes |= {p + "norm1.weight": (dim,), p + "norm1.bias": (dim,)}
        shapes |= {p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,)}
        shapes |= {p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,), p + "ls1.gamma": (dim,)}
        shapes |= {p + "norm2.weight": (dim,), p + "norm2.bias": (dim,)}
        if c.get("use_swiglu_ffn"):
            shapes |= {p + "mlp.w12.weight": (2 * hidden, dim), p + "mlp.w12.bias": (2 * hidden,)}
            shapes |= {p + "mlp.w3.weight": (dim, hidden), p + "mlp.w3.bias": (dim,)}
        else:
            shapes |= {p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,)}
            shapes |= {p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,)}
        shapes[p + "ls2.gamma"] = (dim,)
    shapes |= {"norm.weight": (dim,), "norm.bias": (dim,)}
    if case.params["kind"] == "_linear":
        shapes |= {f"{HEAD}.weight": (c["num_labels"], 2 * dim), f"{HEAD}.bias": (c["num_labels"],)}
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# --------------------------------------------------------------------------- oracle


def timm_backbone(case: Case, original, image_size: int, antialias: bool):
    """timm's DINOv2 ViT for `image_size` px, loaded through timm's own `checkpoint_filter_fn`
    (which detects the original layout by its mask_token), the position embeddings resampled
    bicubic to the new grid at load, with or without `antialias`."""
    from functools import partial

    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import checkpoint_filter_fn

    from ..reference import timm_model

    c = case.config
    dim, registers = c["hidden_size"], c.get("num_register_tokens", 0)
    kwargs = dict(embed_dim=dim, depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"], patch_size=c["patch_size"],
                  img_size=image_size, num_classes=0, reg_tokens=registers, no_embed_class=bool(registers))
    if c.get("use_swiglu_ffn"):  # timm's packed SwiGLU: one fc1 of both halves; its width is int(dim * ratio)
        kwargs |= dict(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, mlp_ratio=(2 * _mlp_hidden(c) + 0.5) / dim)
    else:
        kwargs |= dict(mlp_ratio=c.get("mlp_ratio", 4))
    backbone = {k: v for k, v in original.items() if not k.startswith(f"{HEAD}.")}
    arch = f"vit_{NAMES[case.params['size']]}_patch14_{'reg4_' if registers else ''}dinov2"
    return timm_model(arch, backbone, partial(checkpoint_filter_fn, interpolation="bicubic", antialias=antialias), **kwargs)


def oracle(case: Case, original, antialias: bool | None = None):
    """pixels -> timm's output for the case: all tokens after the final norm (last_hidden_state),
    or for `_linear` the original head on [class token, mean of patch tokens]. A timm model is
    built per input size (its position embeddings are resampled at load), with antialias as
    transformers resamples (register models only) unless `antialias` says otherwise."""
    if antialias is None:
        antialias = bool(case.config.get("num_register_tokens"))
    models = {}
    head = {k.removeprefix(f"{HEAD}."): v for k, v in original.items() if k.startswith(f"{HEAD}.")}

    def forward(pixel_values):
        size = pixel_values.shape[-1]
        if pixel_values.shape[-2] != size:
            raise ValueError(f"{case.id}: the oracle takes square images, got {tuple(pixel_values.shape)}")
        if size not in models:
            models[size] = timm_backbone(case, original, size, antialias)
        model = models[size]
        tokens = model.forward_features(pixel_values)
        if not head:
            return tokens
        features = torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens:].mean(dim=1)], dim=1)
        return torch.nn.functional.linear(features, head["weight"], head["bias"])

    # the model at the case's own size (what the checks feed it), for per-block parity
    forward.model = models[case.image_size] = timm_backbone(case, original, case.image_size, antialias)
    return forward


# --------------------------------------------------------------------------- sources


# dinov2/data/transforms.py make_classification_eval_transform(): short side to 256, bicubic,
# centre crop 224, ImageNet mean/std
EVALUATION = Evaluation(
    source="facebookresearch/dinov2 dinov2/data/transforms.py make_classification_eval_transform()",
    crop_size=EVAL, shortest_edge=256, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
)


def configurations(case: Case, tiny: bool):
    """Any width (heads x head size), depth, MLP ratio, SwiGLU or not, patch size and grid of the
    stored position embeddings; the registers count for _reg4, the classes for _linear."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        heads = draw(st.integers(1, 4 if tiny else 16))
        patch = draw(st.sampled_from([2, 4, 7, 14] if tiny else [4, 8, 14, 16]))
        grid = draw(st.integers(1, 4 if tiny else 37))
        overrides = {
            "num_attention_heads": heads,
            "hidden_size": heads * draw(st.integers(1, 8) if tiny else st.integers(1, 64)),
            "num_hidden_layers": draw(st.integers(1, 3 if tiny else 40)),
            "mlp_ratio": draw(st.sampled_from([1, 2, 4])),  # an int in the 5.x config
            "use_swiglu_ffn": draw(st.booleans()),
            "patch_size": patch,
            "image_size": patch * grid,
        }
        if case.params["kind"] == "_reg4":
            overrides["num_register_tokens"] = draw(st.integers(1, 4 if tiny else 16))
        if case.params["kind"] == "_linear":
            overrides["num_labels"] = draw(st.integers(1, 16 if tiny else 2000))
        return overrides

    return config()


# several blocks (same-shape keys to swap), square matrices; the images are the stored grid's
# size (no interpolation: the mutants test the mapping, tests/test_dinov2.py the interpolation)
_SMALL = {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2, "mlp_ratio": 2, "image_size": 28}

FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    evaluation=EVALUATION,
    mutants=(
        Small("dinov2_vits14", _SMALL, 28),
        Small("dinov2_vits14_reg4", {**_SMALL, "use_swiglu_ffn": True}, 28),
        Small("dinov2_vits14_linear", {**_SMALL, "num_labels": 16}, 28),
    ),
)
