"""RegNet SEER 10B (vissl, classy-vision trunk) -> RegNetModel / RegNetForImageClassification.

Original files are vissl checkpoints, `{"classy_state_dict": {"base_model": {"model": {"trunk": ...,
"heads": ...}}}}`; the loader takes that entry and flattens it to `trunk.<key>` / `heads.<key>`.
Trunk keys follow vissl's FSDP RegNet, which groups each stage's blocks into parts:

    trunk._feature_blocks.conv1.stem.{0,1}.*                              stem conv, BatchNorm
    trunk._feature_blocks.res{S+1}.block{S}-part{G}.block{S}-{I}.*        block I of stage S, in part G
        proj, bn (first block: projection shortcut), f.a.{0,1}, f.b.{0,1} (1x1, grouped 3x3),
        f.se.excitation.{0,2} (squeeze-excitation), f.c, f.final_bn
    heads.0.clf.0.{weight,bias}                                           ImageNet head (in1k only)

Part and block indices have one or two digits (stage 3: parts 0 and 1, blocks 0..16). The parts
come from the 10B config's `stage_checkpoints: [[2], [7], [9, 17], []]`.

The key map is traced: a classy-vision 0.7.0 RegNet with the case depths, its stages regrouped
into vissl's parts (names exactly as vissl's), run against transformers' RegNet on the meta
device. The full 10B (about 40 GB of fp32) cannot be materialised: random weights use a reduced
width (`Case.random_config`: same depths, parts and group counts' pattern), its full-size key
and shape coverage is checked on meta tensors, and `--save` streams the file tensor by tensor.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace

import torch
from torch import nn

from .. import compat
from ..case import IMAGENET_MEAN, IMAGENET_STD, Case
from ..evaluation import Evaluation
from ..family import Family, Provenance, Small
from ..plan import Drop, Plan, Rename
from ..trace import Order, as_plan, trace_map

# vissl's 10B trunk: RegNet generator depth 27, w_0 1744, w_a 620.83, w_m 2.52, group width 1010,
# which gives these stages (tests/test_regnet_seer.py checks it with classy-vision and timm).
DEPTHS = [2, 7, 17, 1]
WIDTHS = [2020, 4040, 11110, 28280]
GROUP_WIDTH = 1010
STAGE_CHECKPOINTS = [[2], [7], [9, 17], []]  # vissl's part boundaries per stage (regnet10B.yaml)
STEM_WIDTH = 32

# RegNet generator parameters (w_0, w_a, w_m, group width) of each width set used here: timm builds
# its RegNet from them. The reduced one scales w_0 and w_a together (the stage split depends only
# on their ratio): the same depths at widths [16, 40, 104, 256] with group width 8.
GENERATOR = {
    (2020, 4040, 11110, 28280): dict(depth=27, w0=1744, wa=620.83, wm=2.52, group_size=1010),
    (16, 40, 104, 256): dict(depth=27, w0=16, wa=620.83 * 16 / 1744, wm=2.52, group_size=8),
}
REDUCED = dict(hidden_sizes=[16, 40, 104, 256], groups_width=8)

BASE_URL = "https://dl.fbaipublicfiles.com/vissl/model_zoo"
PROVENANCE = Provenance(
    # facebookresearch/vissl projects/SEER/README.md, "## Model Documentation & License" (HEAD 09270ed): "The use
    # of SEER model weights is subject to the [Model License](./MODEL_LICENSE)."; projects/SEER/MODEL_LICENSE.md,
    # "SEER LICENSE AGREEMENT" 1a: "... limited license to reproduce, distribute, and create derivative works of the
    # Software solely for your non-commercial research purposes."; 3 requires the notice "SEER is licensed under
    # SEER license, Copyright (c) Meta Platforms, Inc. All Rights Reserved." No Hub licence id: `other`, named as
    # timm names it (timm/models/regnet.py, license='seer-license').
    licence="other",
    licence_name="seer-license",
    licence_link="https://github.com/facebookresearch/vissl/blob/main/projects/SEER/MODEL_LICENSE.md",
    non_commercial=True,
    licence_statement="SEER is licensed under SEER license, Copyright (c) Meta Platforms, Inc. All Rights Reserved: "
                      "the weights may be used solely for non-commercial research purposes (no commercial, "
                      "production, military, law-enforcement or biometric use; see the licence's section 2).",
    licence_source="facebookresearch/vissl projects/SEER/README.md (## Model Documentation & License) and "
                   "projects/SEER/MODEL_LICENSE.md",
    repository="https://github.com/facebookresearch/vissl/tree/main/projects/SEER",
    # The BibTeX of projects/SEER/README.md (the 10B model's paper)
    papers={"2202.08360": "Vision Models Are More Robust And Fair When Pretrained On Uncurated Images Without Supervision"},
    # projects/SEER/README.md: "All SEER models are pretrained on 1 Billion _random_ and _uncurated_ subset of
    # Instagram images."; MODEL_ZOO.md: "IG-1B public images, non EU". Never published.
    unlisted_data=("IG-1B: one billion public, uncurated Instagram images (not on the Hub, not released)",),
)


def _case(case_id: str, hub_name: str, url: str, model_class: str, output: str) -> Case:
    return Case(
        id=case_id,
        family="regnet_seer",
        hub_name=hub_name,
        published_repo=f"facebook/{hub_name}",  # the original script's uploads
        url=url,
        config_class="RegNetConfig",
        config=dict(depths=list(DEPTHS), hidden_sizes=list(WIDTHS), groups_width=GROUP_WIDTH, layer_type="y",
                    embedding_size=STEM_WIDTH, hidden_act="relu", num_labels=1000, image_size=384),
        model_class=model_class,
        output=output,
        # The original evaluation (EVALUATION); the original conversion script's processor (ConvNeXt
        # at 384) squashes the image to a square instead.
        processor_class="BitImageProcessor",
        processor=dict(
            size={"shortest_edge": 384},
            resample=3,  # PIL bicubic
            do_center_crop=True,
            crop_size={"height": 384, "width": 384},
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
            do_convert_rgb=True,
        ),
        atol=1e-5,
        params=dict(stage_checkpoints=STAGE_CHECKPOINTS),
        random_config=REDUCED,
        streamed=True,
        # the fine-tuned checkpoint (README table, "finetuned on IN1K") adds ImageNet-1k
        provenance={"datasets": ("imagenet-1k",)} if output == "logits" else {},
    )


CASES = (
    _case("regnet_y_10b_seer", "regnet-y-10b-seer", f"{BASE_URL}/seer_regnet10B/model_iteration124500_conso.torch",
          "RegNetModel", "last_hidden_state"),
    _case("regnet_y_10b_seer_in1k", "regnet-y-10b-seer-in1k",
          f"{BASE_URL}/seer_finetuned/seer_10b_finetuned_in1k_model_phase28_conso.torch",
          "RegNetForImageClassification", "logits"),
)


def _classifies(case: Case) -> bool:
    return case.model_class == "RegNetForImageClassification"


def parts(case: Case) -> list[list[int]]:
    """Per stage, the block index where each part ends (vissl completes a stage's boundaries
    with its depth; boundaries past a shorter stage's depth do not exist)."""
    checkpoints = case.params.get("stage_checkpoints", [[]] * 4)
    return [[d for d in cuts if d < depth] + [depth] for cuts, depth in zip(checkpoints, case.config["depths"])]


# --------------------------------------------------------------------------- layout


def original_layout(case: Case) -> dict[str, torch.Tensor]:
    """vissl's checkpoint keys and shapes (trunk, and the head for in1k), written from vissl's
    naming; tests compare it with classy-vision's own module tree at reduced and at full size."""
    c = case.config
    shapes: dict[str, tuple] = {}

    def conv(name, out, inp, k=1):
        shapes[name + ".weight"] = (out, inp, k, k)

    def bn(name, n):
        shapes.update({f"{name}.{s}": (n,) for s in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{name}.num_batches_tracked"] = ()

    stem = c.get("embedding_size", STEM_WIDTH)
    conv("trunk._feature_blocks.conv1.stem.0", stem, 3, 3)
    bn("trunk._feature_blocks.conv1.stem.1", stem)
    width_in = stem
    for s, (width, ends) in enumerate(zip(c["hidden_sizes"], parts(case)), start=1):
        groups = max(1, width // c["groups_width"])
        start = 0
        for part, end in enumerate(ends):
            for i in range(start, end):
                p = f"trunk._feature_blocks.res{s + 1}.block{s}-part{part}.block{s}-{i}."
                w_in = width_in if i == 0 else width
                if i == 0:  # every stage starts with stride 2: projection shortcut
                    conv(p + "proj", width, w_in)
                    bn(p + "bn", width)
                conv(p + "f.a.0", width, w_in)
                bn(p + "f.a.1", width)
                conv(p + "f.b.0", width, width // groups, 3)
                bn(p + "f.b.1", width)
                se = int(round(0.25 * w_in))
                conv(p + "f.se.excitation.0", se, width)
                shapes[p + "f.se.excitation.0.bias"] = (se,)
                conv(p + "f.se.excitation.2", width, se)
                shapes[p + "f.se.excitation.2.bias"] = (width,)
                conv(p + "f.c", width, width)
                bn(p + "f.final_bn", width)
            start = end
        width_in = width
    if _classifies(case):
        shapes["heads.0.clf.0.weight"] = (c["num_labels"], c["hidden_sizes"][-1])
        shapes["heads.0.clf.0.bias"] = (c["num_labels"],)
    return {k: torch.empty(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32, device="meta")
            for k, s in shapes.items()}


# --------------------------------------------------------------------------- classy-vision, as vissl arranges it


class VisslTrunk(nn.Module):
    """A classy-vision RegNet with vissl's module names: `_feature_blocks` holding the stem as
    `conv1` and stage S as `res{S+1}`, its blocks grouped into `block{S}-part{G}` (the FSDP
    wrapping of vissl's regnet_fsdp, without FSDP). The blocks are classy-vision's own."""

    def __init__(self, case: Case):
        super().__init__()
        from classy_vision.models.anynet import AnyNet, AnyNetParams

        c = case.config
        anynet = AnyNet(AnyNetParams(
            depths=c["depths"], widths=c["hidden_sizes"], group_widths=[c["groups_width"]] * 4,
            bottleneck_multipliers=[1.0] * 4, strides=[2] * 4, stem_width=c.get("embedding_size", STEM_WIDTH),
        ))
        self._feature_blocks = nn.ModuleDict({"conv1": anynet.stem})
        for s, (stage, ends) in enumerate(zip(anynet.trunk_output.children(), parts(case)), start=1):
            blocks, start, grouped = list(stage.named_children()), 0, nn.Sequential()
            for part, end in enumerate(ends):
                grouped.add_module(f"block{s}-part{part}", nn.Sequential(OrderedDict(blocks[start:end])))
                start = end
            self._feature_blocks[f"res{s + 1}"] = grouped

    def forward(self, x):
        for block in self._feature_blocks.values():
            x = block(x)
        return x


def shortcut_last(order: Order) -> Order:
    """classy-vision computes a block's projection shortcut (`proj`, `bn`) before its residual
    branch `f`; transformers runs the shortcut after it. Move each block's shortcut to its end."""
    def rank(item):
        block, _, leaf = item[0].rpartition(".")
        return leaf in ("proj", "bn") and not block.endswith(".f")

    blocks: dict[str, list] = OrderedDict()
    for item in order:
        block = re.sub(r"\.(proj|bn|f\..*)$", "", item[0])
        blocks.setdefault(block, []).append(item)
    return [item for items in blocks.values() for item in sorted(items, key=rank)]


# --------------------------------------------------------------------------- plan

_PLANS: dict[tuple, Plan] = {}
# Swept from a pretraining file: SwAV's projection head and prototypes (timm's filter drops them too).
SWAV_HEADS = (Drop("heads.{h}.projection_head."), Drop("heads.{h}.prototypes{p}."))


def plan(case: Case) -> Plan:
    key = (tuple(case.config["depths"]), str(parts(case)), case.model_class)
    if key not in _PLANS:
        _PLANS[key] = _trace(case)
    return _PLANS[key]


def _trace(case: Case) -> Plan:
    """Trace at a small width on the meta device: which keys exist depends only on depths and
    parts (every stage's first block has the shortcut)."""
    small = replace(case, config={**case.config, "hidden_sizes": [8, 16, 24, 32], "groups_width": 8})
    config = compat.get_class("RegNetConfig")(**small.config)
    with torch.device("meta"):
        source = VisslTrunk(small).eval()
    target = compat.build_model("RegNetModel", config, device="meta")
    pixels = torch.empty(1, 3, 64, 64, device="meta")
    mapping = trace_map(source, target, [pixels], reorder_source=shortcut_last)
    prefix = "regnet." if _classifies(case) else ""  # RegNetForImageClassification keeps the trunk under `regnet`
    trunk = as_plan({k: prefix + v for k, v in mapping.items()}, prefix="trunk.")
    if _classifies(case):
        return Plan(renames=trunk.renames + (Rename("heads.0.clf.0.", "classifier.1."),))
    return Plan(renames=trunk.renames, ops=SWAV_HEADS)


# --------------------------------------------------------------------------- oracles


def vissl_file(original) -> dict:
    """The flat `trunk.` / `heads.` state back in vissl's file structure."""
    model = {"trunk": {}, "heads": {}}
    for key, value in original.items():
        part, _, rest = key.partition(".")
        model[part][rest] = value
    return {"classy_state_dict": {"base_model": {"model": model}}}


def oracle(case: Case, original):
    """classy-vision's forward (the original code) holding the original trunk, strict load; for
    in1k vissl's head on top: average pool, flatten, the linear `clf.0`. Built on the meta device
    and given the original tensors (assigned): memory-mapped weights are never copied."""
    with torch.device("meta"):
        trunk = VisslTrunk(case).eval()
    trunk.load_state_dict({k.removeprefix("trunk."): v for k, v in original.items() if k.startswith("trunk.")},
                          strict=True, assign=True)
    head = {k.removeprefix("heads.0.clf.0."): v for k, v in original.items() if k.startswith("heads.0.clf.0.")}

    def forward(pixel_values):
        features = trunk(pixel_values)
        if not _classifies(case):
            return features
        return nn.functional.linear(features.mean((2, 3)), head["weight"], head["bias"])

    forward.model = trunk  # the module, for per-block parity
    return forward


def timm_oracle(case: Case, original):
    """timm's RegNet loaded through timm's own SEER filter (`timm.models.regnet._filter_fn`),
    after stripping vissl's part segments, which that filter does not know."""
    from timm.models.regnet import RegNet, RegNetCfg, _filter_fn

    generator = GENERATOR.get(tuple(case.config["hidden_sizes"]))
    if generator is None or generator["group_size"] != case.config["groups_width"]:
        raise ValueError(f"{case.id}: timm builds RegNets from generator parameters; none known for {dict(case.config)}")
    with torch.device("meta"):  # given the original tensors below: nothing is allocated twice
        model = RegNet(RegNetCfg(**generator, se_ratio=0.25, stem_width=case.config.get("embedding_size", STEM_WIDTH)),
                       num_classes=case.config["num_labels"] if _classifies(case) else 0)
    stripped = {re.sub(r"\.block\d+-part\d+", "", k): v for k, v in original.items()}
    model.load_state_dict(_filter_fn(vissl_file(stripped)), strict=True, assign=True)
    model.eval()
    return model if _classifies(case) else model.forward_features


def configurations(case: Case, tiny: bool):
    """vissl's RegNet-Y trunk: four stages of any depth (deep enough to cross the part boundaries
    of the 10B config, which the layout keeps: [[2], [7], [9, 17], []]), widths a multiple of
    the group width (transformers and classy-vision both split a stage's width into
    width // group_width conv groups), any stem; the head (in1k) with any number of classes.
    Widths and stem of at least 4: the squeeze-excitation width round(in / 4) must not be 0."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        group = draw(st.sampled_from([1, 2, 4, 8] if tiny else [1, 2, 8, 16, 64, 1010]))
        multiple = st.integers(max(1, -(-4 // group)), 4 if tiny else 16)
        overrides = {
            "depths": [draw(st.integers(1, high)) for high in ((3, 8, 18, 2) if tiny else (4, 12, 24, 4))],
            "hidden_sizes": [group * draw(multiple) for _ in range(4)],
            "groups_width": group,
            "embedding_size": draw(st.integers(4, 16 if tiny else 64)),
        }
        if _classifies(case):
            overrides["num_labels"] = draw(st.integers(1, 16 if tiny else 2000))
        return overrides

    return config()


# The fine-tuned 10B model's ImageNet-1k evaluation (projects/SEER/README.md, "Inference only of
# Imagenet-1K finetuned 10B SEER model": eval_resnet_8gpu_test_only with transforms=tricks_384_swav),
# whose DATA.TEST.TRANSFORMS are Resize(384, interpolation=3: bicubic), CenterCrop(384), ImageNet
# mean/std. The trunk (no head of its own) is declared with the same transform at the same size.
EVALUATION = Evaluation(
    source="facebookresearch/vissl configs/config/benchmark/fulltune/imagenet1k/transforms/tricks_384_swav.yaml "
           "DATA.TEST.TRANSFORMS",
    crop_size=384, shortest_edge=384, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
)


FAMILY = Family.declared_in(
    globals(),
    evaluation=EVALUATION,
    provenance=PROVENANCE,
    cases=CASES,
    unwrap=("classy_state_dict.base_model.model",),
    # the 10B depths and parts at the reduced random-weights width (Case.random_config)
    mutants=(Small("regnet_y_10b_seer"), Small("regnet_y_10b_seer_in1k", {"num_labels": 256})),
    # the plan is traced on the meta device for each new combination of depths: ~1.5 s an example
    examples={False: (5, 100), True: (5, 100)},
    nightly_large_disk=True,  # two original files of ~40 GB
)
