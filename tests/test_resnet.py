"""ResNet (timm): the traced key map, the pixel divergence's cause, and where real weights come from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import converters
from converters import trace
from converters.families import resnet
from converters.plan import _PLACEHOLDER
from converters.reference import timm_data_config
from vision_port_fixtures.images import synthetic_images
from vision_port_fixtures.originals import resolve

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.resnet


@pytest.mark.parametrize("case_id", [c.id for c in resnet.CASES])
def test_traced_plan_is_an_explicit_whole_key_map(case_id):
    case = converters.get(case_id)
    plan = converters.plan_of(case)
    original = converters.original_layout(case)
    assert not plan.ops
    assert all(not r.source.endswith(".") and not _PLACEHOLDER.search(r.source) for r in plan.renames)
    assert [r.source for r in plan.renames] == list(original), "one rename per original key, in timm's order"
    _, coverage = converters.convert(case, original)
    assert coverage.ok, coverage.describe()


def test_traced_pairs_are_the_expected_modules():
    mapping = {r.source: r.target for r in converters.plan_of(converters.get("resnet50")).renames}
    assert mapping["conv1.weight"] == "resnet.embedder.embedder.convolution.weight"
    assert mapping["bn1.num_batches_tracked"] == "resnet.embedder.embedder.normalization.num_batches_tracked"
    assert mapping["layer1.0.downsample.0.weight"] == "resnet.encoder.stages.0.layers.0.shortcut.convolution.weight"
    assert mapping["layer3.5.conv2.weight"] == "resnet.encoder.stages.2.layers.5.layer.1.convolution.weight"
    assert mapping["layer4.2.bn3.running_var"] == "resnet.encoder.stages.3.layers.2.layer.2.normalization.running_var"
    assert mapping["fc.weight"] == "classifier.1.weight"


def test_a_trace_that_drifts_fails_listing_the_pairs():
    case = converters.get("resnet18")
    pixels = torch.empty(1, 3, 64, 64, device="meta")
    source = trace.call_order(resnet._timm_meta(case), pixels)
    target = trace.call_order(resnet._hf_meta(case), pixels)
    swapped = [source[0], source[2], source[1]] + source[3:]  # conv1 <-> bn1 of the first block
    with pytest.raises(trace.TraceError) as info:
        trace.key_map(swapped, target)
    assert "does not pair with" in str(info.value) and "layer1.0" in str(info.value)
    with pytest.raises(trace.TraceError, match=r"40 source modules with weights ran, 41 target modules"):
        trace.key_map(source[:-1], target)


def test_batchnorm_statistics_are_randomised():
    state = converters.synthetic_original(converters.get("resnet50"))
    for key in ("bn1.running_mean", "layer4.2.bn3.running_var", "layer4.2.bn3.weight", "layer4.2.bn3.bias"):
        default = 1.0 if key.endswith(("var", "weight")) else 0.0
        assert not torch.all(state[key] == default), f"{key} keeps its initial value and would hide a mapping bug"


# --------------------------------------------------------------------------- pixel values


def test_the_pixel_divergence_is_declared_exactly_where_the_crop_offsets_differ():
    declared = {c.id for c in resnet.CASES if c.pixel_divergence}
    assert declared == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}  # crop_pct 0.95; resnet26: 0.875
    for case in resnet.CASES:
        assert case.processor["crop_pct"] == timm_data_config(case.timm_tag)["crop_pct"]


@pytest.mark.parametrize("case_id", ["resnet50", "resnet26"])
def test_the_crop_offset_is_the_only_pixel_difference(case_id):
    """timm's own transform with its centre crop moved to transformers' floor offset gives the
    processor's pixels bit for bit: the divergence is the crop rounding and nothing else."""
    import torchvision.transforms.functional as F

    case = converters.get(case_id)
    timm_transform = converters.source_transform(case)  # Resize, CenterCrop, ToTensor, Normalize
    resize, normalize = timm_transform.transforms[0], timm_transform.transforms[-1]
    assert type(timm_transform.transforms[1]).__name__ == "CenterCrop"
    processor = converters.image_processor(case)
    diffs = {}
    for name, image in synthetic_images().items():
        resized = resize(image)
        top, left = (resized.height - 224) // 2, (resized.width - 224) // 2
        emulated = normalize(F.to_tensor(F.crop(resized, top, left, 224, 224)))
        ours = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(ours, emulated), f"{case_id} {name}: differs beyond the crop offset"
        diffs[name] = (ours - timm_transform(image)).abs().max().item()
    measured = max(diffs.values())
    if case.pixel_divergence:
        assert f"max abs diff {measured:.2f}" in case.pixel_divergence, (diffs, case.pixel_divergence)
    else:
        assert measured == 0.0


# --------------------------------------------------------------------------- where the weights come from


def test_checkpoint_file_pth_and_safetensors(tmp_path):
    case = converters.get("resnet18")
    state = converters.synthetic_original(case)
    torch.save(state, tmp_path / "resnet18.pth")
    save_file(state, str(tmp_path / "resnet18.safetensors"))
    for name in ("resnet18.pth", "resnet18.safetensors"):
        original = resolve(case, "pretrained", {case.id: tmp_path / name})
        assert original.weights == "pretrained" and original.path == str(tmp_path / name)
        assert original.state.keys() == state.keys() and all(torch.equal(original.state[k], v) for k, v in state.items())
        _, coverage = converters.convert(case, original.state)
        assert coverage.ok, coverage.describe()


SEEDED_CACHE = r"""
import json, sys, timm, torch, converters
from vision_port_fixtures.originals import resolve
from converters import sources
from converters.families import resnet
case = converters.get("resnet18")
original = resolve(case, "pretrained", {})
model = timm.create_model(case.timm_tag, pretrained=True)  # timm's own loading, same cache
same = all(torch.equal(v, original.state[k]) for k, v in model.state_dict().items())
try:
    resnet.original_file(converters.get("resnet34"), download=True)
    missing = None
except sources.Unavailable as e:
    missing = str(e)
print(json.dumps({"path": original.path, "weights": original.weights, "published": original.published,
                  "timm_same": same, "keys": len(original.state), "missing": missing}))
"""


def test_pretrained_weights_come_from_timms_hub_cache_offline(tmp_path):
    """A huggingface_hub cache seeded with the file timm would download: found offline by the
    harness and by timm.create_model(pretrained=True) alike; an absent one says how to provide it."""
    case = converters.get("resnet18")
    state = converters.synthetic_original(case)
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))

    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", SEEDED_CACHE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["path"] == str(repo / "snapshots" / commit / "model.safetensors")
    assert found["weights"] == "pretrained" and found["published"] and found["timm_same"] and found["keys"] == len(state)
    assert "timm/resnet34.a1_in1k" in found["missing"] and "--checkpoint resnet34=PATH" in found["missing"]
