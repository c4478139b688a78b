"""ConvNeXt (V1): the original layout against the original code, the original's own quirks (layer
scale registered first, ImageNet-22K heads, the 384 warp), and its files mistaken for ConvNeXt-V2's
(the same key names but for one block entry) or a 22K head's file given to a 1K case: one error
naming the case, the file and the case whose layout the file is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import converters
from converters import CheckpointError, diagnose
from converters.families import convnext
from vision_port_fixtures.originals import from_files

pytestmark = pytest.mark.convnext  # the nightly workflow selects families by mark

TINY, BASE_384 = converters.get("convnext_tiny_1k_224"), converters.get("convnext_base_22k_1k_384")
V2_TINY = converters.get("convnextv2_tiny_1k_224")


def test_original_layout_has_the_original_models_keys():
    """Counted from facebookresearch/ConvNeXt models/convnext.py (HEAD 048efce), `ConvNeXt` built with
    each case's depths, dims and num_classes: keys, their order and shapes were equal to the declared
    layout (tiny 182 keys: 18 blocks of 9; the others 344: 36 blocks)."""
    counts = {c.id: len(converters.original_layout(c)) for c in converters.cases("convnext")}
    assert counts == {c.id: 182 if c.id.startswith("convnext_tiny") else 344 for c in converters.cases("convnext")}
    assert len(counts) == 15  # every file transformers' convert_convnext_to_pytorch.py lists
    layout = list(converters.original_layout(TINY))
    # Block.gamma is the block's own parameter, registered before its submodules: first in each block
    assert layout[16:25] == [f"stages.0.0.{k}" for k in ("gamma", "dwconv.weight", "dwconv.bias", "norm.weight", "norm.bias",
                                                         "pwconv1.weight", "pwconv1.bias", "pwconv2.weight", "pwconv2.bias")]


def test_layer_scale_is_transformers_layer_scale_parameter():
    converted, coverage = converters.plan_of(TINY).forwards(converters.original_layout(TINY), target=converters.target_layout(TINY))
    assert coverage.ok, coverage
    assert tuple(converted["convnext.encoder.stages.3.layers.2.layer_scale_parameter"].shape) == (768,)


def test_22k_cases_keep_the_21841_class_head_and_name_their_training_data():
    """README "ImageNet-22K trained models": the 22K files classify 21841 classes; the 22K -> 1K files 1000."""
    for case in converters.cases("convnext"):
        data = case.id.split("_")[2:-1]
        assert case.config["num_labels"] == (21841 if data == ["22k"] else 1000), case.id
        provenance = converters.family_of(case).provenance_of(case)
        assert provenance.datasets == {"1k": ("imagenet-1k",), "22k": ("imagenet-21k",),
                                       "22k_1k": ("imagenet-21k", "imagenet-1k")}["_".join(data)], case.id
    assert tuple(converters.original_layout(converters.get("convnext_xlarge_22k_224"))["head.weight"].shape) == (21841, 2048)


def test_the_original_evaluation_crops_at_224_and_warps_at_384():
    """datasets.py build_transform(is_train=False): int(224 / (224/256)) = 256 then a 224 crop; a
    (384, 384) warp from 384 on."""
    tiny, base = convnext.evaluation(TINY), convnext.evaluation(BASE_384)
    assert tiny.resize == 256 and not tiny.warp and tiny.crop_size == 224
    assert base.warp and base.resize == (384, 384)


# --------------------------------------------------------------------------- the wrong file


def saved(tmp_path: Path, name: str, state: dict) -> Path:
    path = tmp_path / name
    torch.save({"model": state}, path)
    return path


def load(case, path: Path):
    """The file as --checkpoint CASE=PATH loads it (the plugin's loading)."""
    return from_files(case, {None: path}, published=False, sources={None: str(path)})


@pytest.mark.parametrize(("case", "other", "first"), [
    (TINY, V2_TINY, "first keys not in it: stages.0.0.grn.beta, "),  # V2's GRN where V1 has gamma: 164 of 200 alike
    (V2_TINY, TINY, "first keys not in it: stages.0.0.gamma, "),
    (converters.get("convnext_base_1k_224"), converters.get("convnext_base_22k_224"),  # the 21841-class head
     "first of another shape: head.bias, head.weight"),
], ids=["v2_file_for_v1", "v1_file_for_v2", "22k_file_for_1k"])
def test_a_file_of_another_case_sharing_most_keys_is_one_error_naming_that_case(case, other, first):
    """Most keys and shapes agree, so the majority rule lets such files through; the exact match
    with another case refuses them at load (keys and shapes: meta tensors suffice)."""
    with pytest.raises(CheckpointError) as caught:
        diagnose.check_file(case, "other.pth", converters.original_layout(other))
    message = str(caught.value)
    assert message.startswith(f"{case.id}: other.pth: not {case.id}'s original layout: the file is exactly the layout of "
                              f"{other.id} (family {other.family}, every key and shape alike)"), message
    assert first in message and "\n" not in message and len(message) < 1000, message


def test_a_convnextv2_file_given_to_a_convnext_case_is_refused_as_the_plugin_loads_it(tmp_path):
    zeros = {k: torch.zeros(v.shape) for k, v in converters.original_layout(V2_TINY).items()}  # its layout is what counts
    path = saved(tmp_path, "v2.pth", zeros)
    with pytest.raises(CheckpointError, match=rf"^{TINY.id}: {path}: not {TINY.id}'s original layout: the file is exactly "
                                              rf"the layout of {V2_TINY.id} \(family convnextv2, "):
        load(TINY, path)


def test_the_right_file_and_a_near_miss_load(tmp_path):
    """The exact-match refusal does not fire on the case's own file, nor on one that only adds a
    key (no other case's): that one loads and key coverage lists it. A small configuration: the
    layout, not the size, is what the check reads."""
    small = dataclasses.replace(TINY, config={**TINY.config, "depths": [1, 1, 2, 1], "hidden_sizes": [8, 16, 32, 64], "num_labels": 10})
    state = converters.synthetic_original(small)
    assert load(small, saved(tmp_path, "own.pth", state)).state.keys() == state.keys()
    assert "stray" in load(small, saved(tmp_path, "stray.pth", {**state, "stray": torch.zeros(1)})).state
