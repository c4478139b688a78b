"""ViT (google-research/vision_transformer, JAX/Flax `.npz`) -> ViTForImageClassification.

Original files are flat `.npz` archives of the Flax parameters (vit_jax/models_vit.py
`VisionTransformer`, classifier "token", no representation layer after ImageNet fine-tuning):

    cls (1, 1, D), embedding/{kernel (p, p, 3, D) HWIO, bias}, Transformer/posembed_input/pos_embedding
    (1, 1 + N, D), Transformer/encoderblock_{i}/{LayerNorm_0, LayerNorm_2}/{scale, bias},
    .../MultiHeadDotProductAttention_1/{query, key, value}/{kernel (D, heads, head_dim), bias (heads, head_dim)},
    .../MultiHeadDotProductAttention_1/out/{kernel (heads, head_dim, D), bias},
    .../MlpBlock_3/{Dense_0, Dense_1}/{kernel (in, out), bias}, Transformer/encoder_norm/{scale, bias},
    head/{kernel (D, classes), bias}

The plan reshapes the per-head attention kernels to matrices, transposes every (in, out) kernel to
torch's (out, in) and permutes the HWIO patch kernel to OIHW (three transposes). The original's MLP
uses Flax's `nn.gelu`, whose default is the tanh approximation (jax.nn.gelu approximate=True): the
cases use transformers' `gelu_pytorch_tanh` and the oracle timm's `gelu_tanh`, so both compute the
original's function (timm's and the published repos' default, exact GELU, does not). LayerNorm eps
is Flax's 1e-6. The oracle is timm's ViT loaded through timm's own `.npz` loader
(`VisionTransformer.load_pretrained` -> `_load_weights`) from the archive the original state makes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..case import Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Line, Plan, Rename, Reshape, Transpose

# size -> (hidden, depth, heads, MLP width): vit_jax/configs/models.py get_b16_config / get_l16_config
SIZES = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}
BUCKET = "https://storage.googleapis.com/vit_models"  # README: the vit_models storage bucket, wget form
# (size, patch, image size, file in imagenet21k+imagenet2012/, timm tag of the same weights or None):
# the repos transformers' conversion (convert_vit_timm_to_pytorch.py, from timm's vit_{size}_patch{p}_{res},
# then the jx_ ports of these files) published as google/vit-{size}-patch{p}-{res}. The README: "-224"
# files are fine-tuned at 224, the others at 384. timm keeps the original weights (orig_in21k_ft_in1k)
# for three of them; its other tags of these names hold AugReg weights.
PUBLISHED = (
    ("base", 16, 224, "ViT-B_16-224.npz", "vit_base_patch16_224.orig_in21k_ft_in1k"),
    ("base", 16, 384, "ViT-B_16.npz", "vit_base_patch16_384.orig_in21k_ft_in1k"),
    ("base", 32, 384, "ViT-B_32.npz", None),
    ("large", 16, 224, "ViT-L_16-224.npz", None),
    ("large", 16, 384, "ViT-L_16.npz", None),
    ("large", 32, 384, "ViT-L_32.npz", "vit_large_patch32_384.orig_in21k_ft_in1k"),
)
MEAN_STD = (0.5, 0.5, 0.5)  # (x - 127.5) / 127.5 = (x / 255 - 0.5) / 0.5
# Measured in tests/test_vit.py (TensorFlow's resize modelled by torch's interpolate, which computes the same
# half-pixel bilinear without antialiasing; TensorFlow is not installed here).
TF_RESIZE = (
    "the original evaluation resizes with TensorFlow's tf.image.resize (bilinear, no antialiasing) on the "
    "decoded image; transformers' ViT processor, like the PIL bilinear resize this conversion is checked "
    "against, antialiases when it shrinks an image: on the test photographs at 224 px the normalised pixels "
    "differ by up to 0.81 (0.01-0.04 on average), so the outputs differ from the original evaluation's too"
)

PROVENANCE = Provenance(
    # google-research/vision_transformer LICENSE (Apache 2.0, since its first commit); its README links the
    # weights (the vit_models bucket) and states no other terms for them ("This is not an official Google product.")
    licence="apache-2.0",
    licence_statement="Google releases the ViT code and checkpoints in the vision_transformer repository under the "
                      "Apache License 2.0; its README states no separate terms for the weights.",
    licence_source="google-research/vision_transformer LICENSE and README.md (Available models)",
    repository="https://github.com/google-research/vision_transformer",
    papers={"2010.11929": "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"},
    # README: pre-trained on imagenet21k and fine-tuned on imagenet2012
    datasets=("imagenet-21k", "imagenet-1k"),
)


def _case(size: str, patch: int, image: int, file: str, tag: str | None) -> Case:
    hidden, depth, heads, mlp = SIZES[size]
    name = f"vit_{size}_patch{patch}_{image}"
    hub = name.replace("_", "-")
    return Case(
        id=name,
        family="vit",
        hub_name=hub,
        published_repo=f"google/{hub}",
        url=f"{BUCKET}/imagenet21k+imagenet2012/{file}",
        timm_tag=tag,
        config_class="ViTConfig",
        config=dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp,
                    image_size=image, patch_size=patch, num_labels=1000, qkv_bias=True,
                    layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),  # Flax's LayerNorm eps and nn.gelu
        model_class="ViTForImageClassification",
        output="logits",
        # the original evaluation (`EVALUATION`): a square bilinear resize to the image size, no crop, [-1, 1]
        processor_class="ViTImageProcessor",
        processor=dict(do_resize=True, size={"height": image, "width": image}, resample=2,  # PIL bilinear
                       do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                       image_mean=list(MEAN_STD), image_std=list(MEAN_STD), do_convert_rgb=True),
        # measured on random weights at real size, transformers 5.25 and 4.57.6: 0.0 on the harness's images,
        # up to 1.7e-6 on N(0, 1) pixels
        atol=5e-6,
        # ViT-L: 304M parameters a model; nightly, with -m large, or by full case id with -k
        marks=("large",) if size == "large" else (),
        params=dict(size=size),
        output_divergence=TF_RESIZE,
    )


CASES = tuple(_case(*published) for published in PUBLISHED)

# vit_jax/input_pipeline.py get_data(mode="test"): `tf.image.resize(im, [crop_size, crop_size])` (bilinear,
# the image straight to a square, no crop: "usage of crop_size here is intentional"), then
# `(im - 127.5) / 127.5`. The declaration's reference resizes with PIL's bilinear, which antialiases when
# it shrinks an image and TensorFlow's does not (tests/test_vit.py measures that difference).
SOURCE = "google-research/vision_transformer vit_jax/input_pipeline.py get_data(mode='test') _pp"


def evaluation(case: Case) -> Evaluation:
    return Evaluation(source=SOURCE, crop_size=case.image_size, warp=True, interpolation="bilinear",
                      mean=MEAN_STD, std=MEAN_STD)


# --------------------------------------------------------------------------- plan

BLOCK = "Transformer/encoderblock_{i}/"
ATTENTION = BLOCK + "MultiHeadDotProductAttention_1/"
QKV = ("query", "key", "value")
LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _module(source: str, target: str, leaves: tuple[str, ...]) -> tuple[Rename, ...]:
    """A Flax module's parameters (`kernel`/`scale`, `bias`) -> a torch module's (`weight`, `bias`)."""
    return tuple(Rename(source + leaf, target + LEAF[leaf]) for leaf in leaves)


def _dense(source: str, target: str) -> tuple[Rename, ...]:
    return _module(source, target, ("kernel", "bias"))


def _norm(source: str, target: str) -> tuple[Rename, ...]:
    return _module(source, target, ("scale", "bias"))


def _line(layer: str, attention: tuple[str, ...], mlp: tuple[str, str]) -> Line:
    """One transformers line's block names: attention query, key, value, output; MLP in, out."""
    modules = zip((*(ATTENTION + x + "/" for x in QKV), ATTENTION + "out/"), attention)
    return Line(renames=(*(r for source, target in modules for r in _dense(source, layer + target)),
                         *_dense(BLOCK + "MlpBlock_3/Dense_0/", layer + mlp[0]),
                         *_dense(BLOCK + "MlpBlock_3/Dense_1/", layer + mlp[1]),
                         *_norm(BLOCK + "LayerNorm_0/", layer + "layernorm_before."),
                         *_norm(BLOCK + "LayerNorm_2/", layer + "layernorm_after.")))


LINE5 = _line("vit.layers.{i}.", ("attention.q_proj.", "attention.k_proj.", "attention.v_proj.", "attention.o_proj."),
              ("mlp.fc1.", "mlp.fc2."))
LINE4 = _line("vit.encoder.layer.{i}.", ("attention.attention.query.", "attention.attention.key.",
                                         "attention.attention.value.", "attention.output.dense."),
              ("intermediate.dense.", "output.dense."))


def plan(case: Case) -> Plan:
    c = case.config
    dim, heads = c["hidden_size"], c["num_attention_heads"]
    head = dim // heads
    ops = []
    for x in QKV:  # (D, heads, head_dim) -> (D, D), then (in, out) -> (out, in); biases (heads, head_dim) -> (D,)
        ops += [Reshape(ATTENTION + x + "/kernel", (dim, dim), (dim, heads, head)),
                Reshape(ATTENTION + x + "/bias", (dim,), (heads, head))]
    ops.append(Reshape(ATTENTION + "out/kernel", (dim, dim), (heads, head, dim)))
    ops += [Transpose(ATTENTION + x + "/kernel") for x in (*QKV, "out")]
    ops += [Transpose(BLOCK + f"MlpBlock_3/Dense_{n}/kernel") for n in (0, 1)]
    ops.append(Transpose("head/kernel"))
    # HWIO -> OIHW: (H, W, I, O) -> (O, W, I, H) -> (O, I, W, H) -> (O, I, H, W)
    ops += [Transpose("embedding/kernel", dims) for dims in ((0, 3), (1, 2), (2, 3))]
    return Plan(
        renames=(Rename("cls", "vit.embeddings.cls_token"),
                 Rename("Transformer/posembed_input/pos_embedding", "vit.embeddings.position_embeddings"),
                 *_dense("embedding/", "vit.embeddings.patch_embeddings.projection."),
                 *_norm("Transformer/encoder_norm/", "vit.layernorm."),
                 *_dense("head/", "classifier.")),
        ops=tuple(ops),
        by_line={5: LINE5, 4: LINE4},
    )


# --------------------------------------------------------------------------- original layout


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """The fine-tuned VisionTransformer's Flax parameters, flattened with "/" as the archives hold them,
    on the meta device."""
    c = case.config
    dim, depth, heads, mlp = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"]
    patch, grid, classes = c["patch_size"], c["image_size"] // c["patch_size"], c["num_labels"]
    head = dim // heads
    shapes = {"cls": (1, 1, dim), "embedding/kernel": (patch, patch, 3, dim), "embedding/bias": (dim,),
              "Transformer/posembed_input/pos_embedding": (1, 1 + grid * grid, dim)}
    for i in range(depth):
        block, attention = BLOCK.format(i=i), ATTENTION.format(i=i)
        shapes |= {block + "LayerNorm_0/scale": (dim,), block + "LayerNorm_0/bias": (dim,)}
        for x in QKV:
            shapes |= {f"{attention}{x}/kernel": (dim, heads, head), f"{attention}{x}/bias": (heads, head)}
        shapes |= {attention + "out/kernel": (heads, head, dim), attention + "out/bias": (dim,)}
        shapes |= {block + "LayerNorm_2/scale": (dim,), block + "LayerNorm_2/bias": (dim,)}
        shapes |= {block + "MlpBlock_3/Dense_0/kernel": (dim, mlp), block + "MlpBlock_3/Dense_0/bias": (mlp,),
                   block + "MlpBlock_3/Dense_1/kernel": (mlp, dim), block + "MlpBlock_3/Dense_1/bias": (dim,)}
    shapes |= {"Transformer/encoder_norm/scale": (dim,), "Transformer/encoder_norm/bias": (dim,),
               "head/kernel": (dim, classes), "head/bias": (classes,)}
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# --------------------------------------------------------------------------- oracle


def oracle(case: Case, original):
    """timm's ViT for the case's geometry (tanh GELU, as the original), loaded by timm's own `.npz`
    loader from the original state written as an archive, as `np.savez` of the Flax parameters."""
    import numpy as np
    import timm

    c = case.config
    model = timm.create_model(
        f"vit_{case.params['size']}_patch16_224", pretrained=False, img_size=c["image_size"],
        patch_size=c["patch_size"], embed_dim=c["hidden_size"], depth=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"], mlp_ratio=c["intermediate_size"] / c["hidden_size"],
        num_classes=c["num_labels"], act_layer="gelu_tanh")
    if model.blocks[0].mlp.fc1.out_features != c["intermediate_size"]:  # timm derives the width from a ratio
        raise ValueError(f"{case.id}: timm's MLP width {model.blocks[0].mlp.fc1.out_features} is not {c['intermediate_size']}")
    model.to(next(iter(original.values())).dtype)  # the archive's dtype (the draft codes elements in float64)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "original.npz"
        np.savez(path, **{k: v.detach().cpu().numpy() for k, v in original.items()})
        model.load_pretrained(str(path))
    return model.eval()


def configurations(case: Case, tiny: bool):
    """Any width (heads x head size), depth, MLP width (a whole multiple of the width: timm takes a
    ratio), patch size, grid of patches and number of classes."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        heads = draw(st.integers(1, 4 if tiny else 16))
        hidden = heads * draw(st.integers(1, 8) if tiny else st.integers(1, 64))
        patch = draw(st.sampled_from([1, 2, 4] if tiny else [8, 14, 16, 32]))
        return {"num_attention_heads": heads, "hidden_size": hidden,
                "intermediate_size": hidden * draw(st.integers(1, 4)),
                "num_hidden_layers": draw(st.integers(1, 3 if tiny else 32)),
                "patch_size": patch, "image_size": patch * draw(st.integers(1, 4 if tiny else 24)),
                "num_labels": draw(st.integers(1, 16 if tiny else 2000))}

    return config()


FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    # two blocks (same-shape tensors to swap), non-square patches of the MLP, a 4x4 grid
    mutants=(Small("vit_base_patch16_224", {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                                            "intermediate_size": 64, "patch_size": 8, "image_size": 32,
                                            "num_labels": 16}, 32),),
)
