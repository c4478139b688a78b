"""ResNet (timm) -> ResNetForImageClassification.

The original is timm's own model: its state dict is the original layout (timm's resnet keys equal
torchvision's). timm and transformers build the same network with different module trees, so the
key map is derived by module-order tracing of both models on the case configuration (on the meta
device: no memory, no arithmetic) and used as an explicit plan of whole-key renames.

Pretrained weights come the way timm gets them: the hub repository its pretrained config names
(`timm/resnet50.a1_in1k`), through huggingface_hub's cache, `model.safetensors` first.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import compat
from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import timm_evaluation
from ..family import Family, Provenance, Small
from ..plan import Plan, meta_state
from ..sources import Unavailable, cache_path, reachable
from ..trace import as_plan, trace_map

# timm architecture -> (depths, block), from timm's model definitions (timm.models.resnet)
ARCHS = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet26": ((2, 2, 2, 2), "bottleneck"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
    "resnet152": ((3, 8, 36, 3), "bottleneck"),
}
# timm's default pretrained tag of each (what `timm.create_model(name, pretrained=True)` loads)
TAGS = {"resnet18": "a1_in1k", "resnet26": "bt_in1k", "resnet34": "a1_in1k", "resnet50": "a1_in1k",
        "resnet101": "a1h_in1k", "resnet152": "a1h_in1k"}
# timm's eval crop_pct of each tag (its pretrained config)
CROP_PCT = {"resnet26": 0.875}
EXPANSION = {"basic": 1, "bottleneck": 4}

RESNET, RSB, BAG_OF_TRICKS = "1512.03385", "2110.00476", "1812.01187"
PAPERS = {RESNET: "Deep Residual Learning for Image Recognition",
          RSB: "ResNet strikes back: An improved training procedure in timm",
          BAG_OF_TRICKS: "Bag of Tricks for Image Classification with Convolutional Neural Networks"}
# The recipe paper of each tag (timm hfdocs/source/hparams.mdx: a1 = ResNet Strikes Back A1,
# a1h = "Based on ResNet Strikes Back A1 recipe", bt = "Bag-of-Tricks recipe").
RECIPE = {"a1_in1k": RSB, "a1h_in1k": RSB, "bt_in1k": BAG_OF_TRICKS}

PROVENANCE = Provenance(
    # timm/models/resnet.py `_cfg()`: 'license': 'apache-2.0' (pytorch-image-models HEAD aa4b585); its README,
    # "### Pretrained Weights": "Any models I have trained with ImageNet are done for research purposes and one
    # should assume that the original dataset license applies to the weights. It's best to seek legal advice if
    # you intend to use the pretrained weights in a commercial product."
    licence="apache-2.0",
    licence_statement="timm publishes these weights under Apache 2.0, and its README adds that, trained on "
                      "ImageNet for research purposes, they should be assumed to fall under the ImageNet dataset "
                      "licence (seek legal advice before commercial use).",
    licence_source="huggingface/pytorch-image-models timm/models/resnet.py (_cfg license) and README.md "
                   "(### Pretrained Weights)",
    repository="https://github.com/huggingface/pytorch-image-models",
    datasets=("imagenet-1k",),  # the tags' `_in1k`
)

# Measured on the synthetic test images (640x480: 3.85; 480x640, 500x333: 4.11), tests/test_resnet.py.
CROP_OFFSET = (
    "timm centre-crops 235 -> 224 at torchvision's offset round(5.5) = 6 (half to even), every transformers "
    "processor at (235 - 224) // 2 = 5 and none can be configured to 6: one row (portrait: column) shifted, "
    "max abs diff 4.11 on the synthetic test images; with timm's crop moved to 5 the pixels are equal"
)


def _case(arch: str) -> Case:
    depths, layer_type = ARCHS[arch]
    widths = [w * EXPANSION[layer_type] for w in (64, 128, 256, 512)]
    crop_pct = CROP_PCT.get(arch, 0.95)
    diverges = (int(224 / crop_pct) - 224) % 4 == 3  # leftover 4k+3: half-even rounding and floor disagree
    return Case(
        id=arch,
        family="resnet",
        hub_name=f"resnet-{arch.removeprefix('resnet')}",
        published_repo=f"microsoft/resnet-{arch.removeprefix('resnet')}",  # the original script's uploads
        url=None,
        config_class="ResNetConfig",
        config=dict(depths=list(depths), hidden_sizes=widths, layer_type=layer_type, embedding_size=64, num_labels=1000),
        model_class="ResNetForImageClassification",
        output="logits",
        processor_class="ConvNextImageProcessor",
        processor=dict(
            size={"shortest_edge": 224},
            crop_pct=crop_pct,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
            resample=3,  # PIL bicubic, as timm
            do_convert_rgb=True,  # grayscale, RGBA and palette images as the original loader's RGB
        ),
        timm_tag=f"{arch}.{TAGS[arch]}",
        atol=1e-5,
        params=dict(arch=arch),
        pixel_divergence=CROP_OFFSET if diverges else None,
        provenance=dict(papers={p: PAPERS[p] for p in (RESNET, RECIPE[TAGS[arch]])},
                        base_model=f"timm/{arch}.{TAGS[arch]}"),  # timm's hub repo of the weights
    )


CASES = tuple(_case(arch) for arch in ARCHS)


def _timm_kwargs(case: Case) -> dict:
    """timm ResNet arguments for the case configuration (any depths, widths, classes)."""
    c = case.config
    expansion = EXPANSION[c["layer_type"]]
    # timm's 7x7 stem is always 64 wide (stem_width only sizes its deep stems), like embedding_size 64
    return dict(layers=list(c["depths"]), channels=[w // expansion for w in c["hidden_sizes"]], num_classes=c["num_labels"])


def _arch(case: Case) -> str:
    # timm's resnet18 and resnet50 entry points give the basic and bottleneck blocks; depths,
    # widths and classes come from the case
    return "resnet18" if case.config["layer_type"] == "basic" else "resnet50"


def _timm_meta(case: Case):
    import timm

    with torch.device("meta"):
        return timm.create_model(_arch(case), pretrained=False, **_timm_kwargs(case)).eval()


def _hf_meta(case: Case):
    return compat.build_model(case.model_class, compat.get_class(case.config_class)(**case.config), device="meta")


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """timm's model state dict, key for key (BatchNorm statistics included), on the meta device."""
    return meta_state(_timm_meta(case).state_dict())


_PLANS: dict[str, Plan] = {}  # traced plans by configuration


def plan(case: Case) -> Plan:
    """The whole-key map traced on the case configuration (which modules exist depends on depths,
    block type and whether widths change, so the configuration itself is traced, on meta)."""
    key = json.dumps(dict(case.config), sort_keys=True)
    if key not in _PLANS:
        pixels = torch.empty(1, 3, 64, 64, device="meta")
        _PLANS[key] = as_plan(trace_map(_timm_meta(case), _hf_meta(case), [pixels]))
    return _PLANS[key]


def oracle(case: Case, original):
    """timm's ResNet holding the original state dict (strict load: the original is timm's layout)."""
    from ..reference import timm_model

    return timm_model(_arch(case), original, None, **_timm_kwargs(case))


def original_file(case: Case, download: bool) -> Path:
    """The timm weights file, found (or fetched) where timm's pretrained loading looks for it:
    the hub repository of its pretrained config through huggingface_hub's cache, safetensors
    first, as `timm.models.load_state_dict_from_hf` does."""
    import timm
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from timm.models._builder import _resolve_pretrained_source
    from timm.models._hub import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    source, location = _resolve_pretrained_source(timm.models.get_pretrained_cfg(case.timm_tag).to_dict())
    if source == "file":
        return Path(location)
    if source == "url":  # timm found the file in torch hub's cache (timm's old download path)
        return cache_path(location)
    offline = not (download and reachable("https://huggingface.co"))
    for name in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
        try:
            return Path(hf_hub_download(location, name, local_files_only=offline))
        except EntryNotFoundError:
            continue  # online: the repository has no such file, try the next name
        except LocalEntryNotFoundError:
            continue
    raise Unavailable(
        f"{case.id}: {location} ({HF_SAFE_WEIGHTS_NAME}) is not in the huggingface_hub cache and the hub is "
        f"not reachable; run timm.create_model({case.timm_tag!r}, pretrained=True) once online, "
        f"or pass --checkpoint {case.id}=PATH"
    )


def configurations(case: Case, tiny: bool):
    """timm's ResNet with any depths and widths of its four stages, basic or bottleneck blocks
    (hidden sizes are the stage widths times the block's expansion); with a classifier or
    without (num_labels 0: timm num_classes=0, transformers an Identity). The stem stays 64
    wide: timm's default stem ignores stem_width (only its deep stems use it)."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        layer_type = draw(st.sampled_from(["basic", "bottleneck"]))
        widths = draw(st.lists(st.integers(2, 12) if tiny else st.integers(1, 256), min_size=4, max_size=4))
        return {
            "layer_type": layer_type,
            "depths": draw(st.lists(st.integers(1, 3 if tiny else 6), min_size=4, max_size=4)),
            "hidden_sizes": [w * EXPANSION[layer_type] for w in widths],
            "num_labels": draw(st.integers(0, 16 if tiny else 2000)),
        }

    return config()


FAMILY = Family.declared_in(
    globals(),
    evaluation=timm_evaluation,  # the original is timm (its a1/a1h/bt weights): the tag's pretrained config
    provenance=PROVENANCE,
    cases=CASES,
    mutants=(Small("resnet18", {"depths": [2, 1, 1, 2], "hidden_sizes": [8, 8, 16, 16], "num_labels": 16}),
             Small("resnet50", {"depths": [1, 2, 1, 1], "hidden_sizes": [16, 16, 32, 32], "num_labels": 32})),
)
