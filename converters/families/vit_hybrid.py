"""ViT-hybrid (timm `vit_base_r50_s16_384`: a BiT ResNet stem + ViT-B/16 at 384 px) ->
ViTHybridForImageClassification.

The original is timm's own model: its state dict is the original layout, and the published
weights are timm's (`timm/vit_base_r50_s16_384.orig_in21k_ft_in1k` on the Hub). ViTHybrid left
transformers in 5.0; the last release with it is 4.57.6 (`converters.compat` finds it there and
reports it unsupported on 5.x, which the harness turns into a skip).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import vit_blocks
from ..case import Case
from ..evaluation import timm_evaluation
from ..family import TRANSFORMERS_LINES, Family, Provenance
from ..plan import Plan, Rename, meta_state
from ..sources import Unavailable, reachable

TIMM_TAG = "vit_base_r50_s16_384.orig_in21k_ft_in1k"
HUB_ID = f"timm/{TIMM_TAG}"  # where timm's pretrained weights live
HUB_FILE = "model.safetensors"

PROVENANCE = Provenance(
    # timm/models/vision_transformer_hybrid.py `_cfg()`: 'license': 'apache-2.0' (pytorch-image-models HEAD aa4b585).
    # The original, google-research/vision_transformer (HEAD c6de1e5), has an Apache 2.0 LICENSE (since its first
    # commit) but no sentence that licenses the weights; its README's only such text is "This is not an official
    # Google product." So the weights' apache-2.0 is timm's statement, inferred from the repo licence.
    licence="apache-2.0",
    licence_statement="timm publishes these weights (its conversion of Google's R50+ViT-B/16 JAX checkpoint) under "
                      "Apache 2.0, the licence of Google's vision_transformer repository, which states no "
                      "separate licence for its weights.",
    licence_source="huggingface/pytorch-image-models timm/models/vision_transformer_hybrid.py (_cfg license); "
                   "google-research/vision_transformer LICENSE (Apache 2.0; README.md states no weights licence)",
    repository="https://github.com/google-research/vision_transformer",
    papers={"2010.11929": "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"},
    # README: "`gs://vit_models/imagenet21k+imagenet2012` - Models pre-trained on ImageNet-21k and fine-tuned on ImageNet."
    datasets=("imagenet-21k", "imagenet-1k"),
    base_model=HUB_ID,
)

CASES = (
    Case(
        id="vit_hybrid_base_bit_384",
        family="vit_hybrid",
        hub_name="vit_base_r50_s16_384",  # the original script pushes to ybelkada/<timm name>
        published_repo="google/vit-hybrid-base-bit-384",  # where that upload lives now
        url=f"https://huggingface.co/{HUB_ID}/resolve/main/{HUB_FILE}",
        config_class="ViTHybridConfig",
        config=dict(
            backbone_config=dict(
                model_type="bit",
                global_padding="same",
                layer_type="bottleneck",
                depths=[3, 4, 9],
                out_features=["stage3"],
                embedding_dynamic_padding=True,
            ),
            image_size=384,
            num_labels=1000,
            # timm's ViT LayerNorms use eps 1e-6; the config default 1e-12 moves logits by ~1e-4.
            layer_norm_eps=1e-6,
        ),
        model_class="ViTHybridForImageClassification",
        output="logits",
        # timm's data config for the tag: bicubic, crop_pct 1.0 (resize the short side to 384,
        # centre-crop 384), mean/std 0.5 (tests/test_vit_hybrid.py derives these from timm).
        processor_class="ViTHybridImageProcessor",
        processor=dict(
            do_resize=True,
            size={"shortest_edge": 384},
            resample=3,  # PIL bicubic
            do_center_crop=True,
            crop_size={"height": 384, "width": 384},
            do_normalize=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        ),
        timm_tag=TIMM_TAG,
        atol=1e-5,
        params=dict(arch="vit_base_r50_s16_384"),
    ),
)

_BACKBONE = "vit.embeddings.patch_embeddings.backbone.bit."

_LAYER = "vit.encoder.layer.{i}."

_PLAN = Plan(
    # timm fuses q, k, v into one projection: (3C, C) weight and (3C,) bias, in that order.
    ops=vit_blocks.split_qkv(),
    renames=(
        Rename("cls_token", "vit.embeddings.cls_token"),
        Rename("pos_embed", "vit.embeddings.position_embeddings"),
        Rename("patch_embed.proj.", "vit.embeddings.patch_embeddings.projection."),
        Rename("patch_embed.backbone.stem.conv.", _BACKBONE + "embedder.convolution."),
        Rename("patch_embed.backbone.stem.norm.", _BACKBONE + "embedder.norm."),
        # bottleneck blocks: conv1..3, norm1..3 and the first block's downsample keep their names
        Rename("patch_embed.backbone.stages.{s}.blocks.{b}.", _BACKBONE + "encoder.stages.{s}.layers.{b}."),
        *vit_blocks.attention("blocks.{i}.", _LAYER),
        *vit_blocks.bert_block("blocks.{i}.", _LAYER),
        Rename("norm.", "vit.layernorm."),
        Rename("head.", "classifier."),
    ),
)


def plan(case: Case) -> Plan:
    return _PLAN


def _timm_kwargs(case: Case) -> dict:
    return dict(num_classes=case.config["num_labels"])


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """timm's model state dict, key for key, on the meta device (no memory)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(case.params["arch"], pretrained=False, **_timm_kwargs(case))
    return meta_state(model.state_dict())


def oracle(case: Case, original):
    """timm's model holding the original state dict (timm's own layout: no filter needed)."""
    from ..reference import timm_model

    return timm_model(case.params["arch"], original, None, **_timm_kwargs(case))


def original_file(case: Case, download: bool) -> Path:
    """timm's pretrained weights through the Hub cache (honours HF_HUB_OFFLINE and HF_HOME)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(HUB_ID, HUB_FILE, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if not download or not reachable(case.url):
        raise Unavailable(f"{case.id}: {HUB_ID}/{HUB_FILE} is not in the Hub cache and the Hub is not reachable; "
                          f"pass --checkpoint {case.id}=PATH (timm's state dict, .safetensors or .pth)")
    return Path(hf_hub_download(HUB_ID, HUB_FILE))


def configurations(case: Case, tiny: bool):
    """The original layout is timm's fixed vit_base_r50_s16_384 (only num_classes is passed to
    timm): the number of classes is all a configuration can vary."""
    from hypothesis import strategies as st

    return st.fixed_dictionaries({"num_labels": st.integers(1, 2000)})


FAMILY = Family.declared_in(
    globals(),
    # The original is timm: TIMM_TAG's pretrained config (short side 384 bicubic, crop 384, mean/std 0.5).
    # The JAX weights' own evaluation (google-research/vision_transformer vit_jax/input_pipeline.py, test
    # mode: tf.image.resize to 384x384, bilinear, (x - 127.5) / 127.5) is TensorFlow's, not declared here.
    evaluation=timm_evaluation,
    provenance=PROVENANCE,
    cases=CASES,
    # the layout ignores the configured sizes: 98M random parameters per real-tensor example
    examples={True: (1, 3)},
    # ViTHybrid left transformers in 5.0: on 5.x its cases only skip
    transformers_lines=tuple(line for line in TRANSFORMERS_LINES if line.startswith("==4")),
)
