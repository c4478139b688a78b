"""data2vec-vision (facebookresearch/data2vec_vision, the BEiT code base) -> Data2VecVisionModel
(pre-training checkpoints) and Data2VecVisionForImageClassification (ImageNet-1k fine-tuned).

Original files are `{"model": ...}` (pre-training, `run_cyclical.py`) or `{"module": ...}`
(fine-tuned, DeepSpeed's `mp_rank_00_model_states.pt`); both may hold the training arguments as
an `argparse.Namespace`, which the safe loader allows and nothing else.

The two layouts (written out in converters/relpos_vit.py, shared with the other families of this
code base; the base model is `data2vec_vision` there, its names the same on both transformers lines):
- pre-training (`VisionTransformerForCyclicalTraining`): `mask_token`, one shared relative
  position bias `rel_pos_bias.*`, final `norm`, and `lm_head` (the regression head of
  pre-training, which Data2VecVisionModel has no place for: dropped, and not restorable);
- fine-tuned (`VisionTransformer`): a relative position bias per block, mean pooling through
  `fc_norm`, classifier `head`; no `mask_token`, `norm` is an identity.
Both: fused qkv weight with q and v biases only (no k bias), layer scales `gamma_1/2`, and
`relative_position_index` buffers, which transformers recomputes (dropped; rebuilt on the way back).

timm's BEiT differs from the original layout only in what it lacks: `relative_position_index`
(non-persistent in timm), and in the pre-training layout `mask_token` and `lm_head`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from .. import relpos_vit
from ..case import Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Plan
from ..sources import Unavailable, reachable

# size -> (hidden size, depth, heads, MLP size), from the original model definitions
SIZES = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}
PATCH, IMAGE = 16, 224
BASE_URL = "https://dl.fbaipublicfiles.com/fairseq/data2vec/data2vec_vision"
# (size, fine-tuned) -> the published file (data2vec_vision README, "Model Checkpoints")
URLS = {
    ("base", False): f"{BASE_URL}/base_800/checkpoint-799.pth",
    ("large", False): f"{BASE_URL}/large_1600/checkpoint-799.pth",
    ("base", True): f"{BASE_URL}/finetuned_base/checkpoint-99/mp_rank_00_model_states.pt",
    ("large", True): f"{BASE_URL}/finetuned_large/checkpoint-49/mp_rank_00_model_states.pt",
}


PROVENANCE = Provenance(
    # facebookresearch/data2vec_vision beit/README.md, "## LICENSE" (HEAD af9a363): "Data2Vec is licensed under
    # CC-BY-NC, however portions of the project are available under separate license terms: Unilm is licensed
    # under the MIT license."; fairseq examples/data2vec/README.md: "Vision models only are license under CC-BY-NC."
    # Neither gives a version: 4.0, the current one (and ConvNeXt-V2's, from the same lab), is our reading.
    licence="cc-by-nc-4.0",
    non_commercial=True,
    licence_statement="The data2vec-vision weights are licensed under CC-BY-NC (non-commercial use only; the "
                      "original gives no version, read here as 4.0); the UniLM/BEiT code they build on is MIT.",
    licence_source="facebookresearch/data2vec_vision beit/README.md (## LICENSE); facebookresearch/fairseq "
                   "examples/data2vec/README.md",
    repository="https://github.com/facebookresearch/data2vec_vision/tree/main/beit",
    papers={"2202.03555": "data2vec: A General Framework for Self-supervised Learning in Speech, Vision and Language"},
    # the paper: self-supervised pre-training and fine-tuning on ImageNet-1k
    datasets=("imagenet-1k",),
)


def _case(size: str, finetuned: bool) -> Case:
    hidden, depth, heads, mlp = SIZES[size]
    config = dict(
        hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp,
        image_size=IMAGE, patch_size=PATCH,
        use_absolute_position_embeddings=False,
        use_relative_position_bias=finetuned,  # one table per block
        use_shared_relative_position_bias=not finetuned,  # one table for all blocks
        use_mean_pooling=finetuned,
        use_mask_token=not finetuned,
        # The original LayerNorms use eps 1e-6; the config default 1e-12 (the original script's) differs.
        layer_norm_eps=1e-6,
    )
    if finetuned:
        config["num_labels"] = 1000
    suffix = "_ft1k" if finetuned else ""
    return Case(
        id=f"data2vec_vision_{size}{suffix}",
        family="data2vec_vision",
        hub_name=f"data2vec-vision-{size}{suffix.replace('_', '-')}",
        published_repo=f"facebook/data2vec-vision-{size}{suffix.replace('_', '-')}",  # the original script's uploads
        url=URLS[size, finetuned],
        config_class="Data2VecVisionConfig",
        config=config,
        model_class="Data2VecVisionForImageClassification" if finetuned else "Data2VecVisionModel",
        output="logits" if finetuned else "last_hidden_state",
        # The original evaluation (EVALUATION): short side to 256, bicubic, centre crop 224, mean/std 0.5.
        # BitImageProcessor, not BeitImageProcessor (the old conversion script's, which squashed to
        # 224x224): 4.57.6's BeitImageProcessor refuses {"shortest_edge": ...} (it takes height and
        # width only), so a saved BEiT config could reproduce the original on 5.x alone.
        processor_class="BitImageProcessor",
        processor=dict(
            do_resize=True,
            size={"shortest_edge": 256},
            resample=3,  # PIL bicubic
            do_center_crop=True,
            crop_size={"height": IMAGE, "width": IMAGE},
            do_normalize=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            do_convert_rgb=True,  # grayscale, RGBA and palette images as the original loader's RGB
        ),
        atol=1e-5,
        # ViT-L at full size: ~65 s and 5 GB per case on 2 cores, twice the four base checks together.
        marks=("large",) if size == "large" else (),
        params=dict(size=size, finetuned=finetuned),
    )


CASES = tuple(_case(size, finetuned) for finetuned in (False, True) for size in SIZES)


# --------------------------------------------------------------------------- plan, layout, oracle
# The architecture's conversion is shared (converters/relpos_vit.py): data2vec-vision's transformers
# classes name the base model `data2vec_vision`; timm's BEiT is the oracle.

relative_position_index = relpos_vit.relative_position_index


def plan(case: Case) -> Plan:
    return relpos_vit.plan(case.config, classifier=case.params["finetuned"], base="data2vec_vision")


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    return relpos_vit.original_layout(case.config, classifier=case.params["finetuned"])


def oracle(case: Case, original):
    from timm.models.beit import checkpoint_filter_fn

    return relpos_vit.oracle(case.config, case.params["finetuned"], original, f"beit_{case.params['size']}_patch16_224",
                             checkpoint_filter_fn)


# --------------------------------------------------------------------------- sources


# facebookresearch/data2vec_vision beit/datasets.py build_transform(is_train=False) (the BEiT code,
# identical in microsoft/unilm beit/datasets.py), with run_class_finetuning.py's defaults, which the
# README's fine-tuning commands keep: crop_pct None -> 224/256, so Resize(int(224 / (224/256)) = 256,
# interpolation=3 (bicubic)) and CenterCrop(224); --imagenet_default_mean_and_std off -> timm's
# Inception mean/std (0.5). The pre-training commands set that flag (ImageNet mean/std), but the
# backbones are evaluated by fine-tuning through this same transform: all four cases declare it.
EVALUATION = Evaluation(
    source="facebookresearch/data2vec_vision beit/datasets.py build_transform(is_train=False) "
           "(run_class_finetuning.py defaults)",
    crop_size=IMAGE, crop_pct=224 / 256, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
)


def cache_path(case: Case) -> Path:
    """The torch hub cache, one file per case: the published names repeat (checkpoint-799.pth)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{case.id}-{os.path.basename(urlparse(case.url).path)}"


def original_file(case: Case, download: bool) -> Path:
    path = cache_path(case)
    if path.is_file():
        return path
    if not download or not reachable(case.url):
        raise Unavailable(f"{case.id}: {case.url} is not cached and not reachable; "
                          f"put the original file at {path} or pass --checkpoint {case.id}=PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(case.url, str(path), progress=False)  # writes a temp file, then renames
    return path


def configurations(case: Case, tiny: bool):
    """Any depth, heads x head size, MLP size, patch size and window; the published case decides the
    layout (pre-training: no classifier; fine-tuned: classes)."""
    return relpos_vit.configurations(case.params["finetuned"], tiny)


_SMALL = relpos_vit.SMALL

FAMILY = Family.declared_in(
    globals(),
    provenance=PROVENANCE,
    cases=CASES,
    unwrap=("model", "module"),
    allow=(argparse.Namespace,),  # the training arguments stored next to the weights
    evaluation=EVALUATION,
    # both layouts: pre-training and fine-tuned
    mutants=(Small("data2vec_vision_base", _SMALL), Small("data2vec_vision_base_ft1k", {**_SMALL, "num_labels": 32})),
)
