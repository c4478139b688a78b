"""data2vec-vision originals: the wrong file for a case, pickled objects beyond the allow-list,
the training arguments the original files carry, and the rebuilt relative position index."""

from __future__ import annotations

import argparse

import pytest
import torch

import converters
from converters import CheckpointError, checks, sources
from converters.families import data2vec_vision

pytestmark = pytest.mark.data2vec_vision  # the nightly workflow selects families by mark
BASE, BASE_FT, LARGE = (converters.get(c) for c in ("data2vec_vision_base", "data2vec_vision_base_ft1k", "data2vec_vision_large"))


def file_like(case) -> dict[str, torch.Tensor]:
    """Real tensors in the case's original layout: what loading a file of that layout gives."""
    return {k: v if not v.is_meta else torch.zeros(v.shape) for k, v in converters.original_layout(case).items()}


def save_and_load(case, tmp_path, original, wrapper="model", **extra):
    path = tmp_path / f"{wrapper}.pth"
    torch.save({wrapper: original, **extra}, path)
    return converters.load_original(case, path).state


def test_fine_tuned_file_for_pre_training_case_lists_every_offending_key(tmp_path):
    state = save_and_load(BASE, tmp_path, file_like(BASE_FT), wrapper="module")
    _, coverage = converters.convert(BASE, state)
    per_block = [f"blocks.{i}.attn.relative_position_{what}" for i in range(12) for what in ("bias_table", "index")]
    assert sorted(coverage.unconsumed) == sorted(per_block + ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"])
    assert coverage.missing == sorted(["embeddings.mask_token", "encoder.relative_position_bias.relative_position_bias_table",
                                       "layernorm.weight", "layernorm.bias"])
    assert not coverage.shape_mismatches and not coverage.unexpected and not coverage.duplicates
    check = checks.key_coverage(BASE.id, coverage)
    assert not check.ok and check.message.startswith(f"{BASE.id}: key coverage failed, 32 problems")
    assert all(line in check.message for line in coverage.problems())


def test_base_file_for_large_case_lists_every_shape_and_missing_layer(tmp_path):
    _, coverage = converters.convert(LARGE, save_and_load(LARGE, tmp_path, file_like(BASE)))
    target = converters.target_layout(LARGE)
    produced_from_base = set(converters.target_layout(BASE))
    assert {k for k, _, _ in coverage.shape_mismatches} == produced_from_base  # every tensor is 768 wide, not 1024
    assert coverage.missing == sorted(k for k in target if k not in produced_from_base)  # layers 12-23
    assert coverage.missing and all(int(k.split(".")[2]) >= 12 for k in coverage.missing)
    assert not coverage.unconsumed and not coverage.unexpected
    assert ("shape mismatch: encoder.layer.0.attention.attention.query.weight produced (768, 768) expected (1024, 1024)"
            in coverage.problems())
    assert ("shape mismatch: encoder.relative_position_bias.relative_position_bias_table produced (732, 12) expected (732, 16)"
            in coverage.problems())


class Opaque:
    """A harmless class the allow-list does not name: loading must refuse it, not construct it."""


def test_unexpected_pickled_object_is_refused_naming_type_case_and_path(tmp_path):
    path = tmp_path / "checkpoint-99.pth"
    torch.save({"module": {"cls_token": torch.zeros(1, 1, 768)}, "args": argparse.Namespace(lr=4e-3), "scaler": Opaque()}, path)
    with pytest.raises(CheckpointError) as info:
        converters.load_original(BASE_FT, path)
    message = str(info.value)
    assert f"{Opaque.__module__}.Opaque" in info.value.reason and "refused to unpickle" in info.value.reason
    assert BASE_FT.id in message and str(path) in message


def test_training_arguments_namespace_is_allowed_with_weights_only(tmp_path):
    path = tmp_path / "checkpoint-799.pth"
    original = {"cls_token": torch.randn(1, 1, 768)}
    torch.save({"model": original, "args": argparse.Namespace(model="beit_base_patch16_224", input_size=224), "epoch": 799}, path)
    loaded = converters.load_original(BASE, path)  # weights_only=True with argparse.Namespace allowed
    assert loaded.unwrapped == "model" and loaded.ignored == ["args", "epoch"]
    assert torch.equal(loaded.state["cls_token"], original["cls_token"])
    # The allow-list is what admits it: a family without one refuses the same file.
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        converters.load_original(converters.get("convnextv2_atto_1k_224"), path)


@pytest.mark.parametrize("window", [7, 14, 24])
def test_rebuilt_relative_position_index_matches_timm(window):
    from timm.models.beit import gen_relative_position_index

    rebuilt = data2vec_vision.relative_position_index(window)
    assert rebuilt.dtype == torch.int64 and torch.equal(rebuilt, gen_relative_position_index((window, window)))


def test_round_trip_restores_the_index_and_says_lm_head_is_lost():
    layout = converters.original_layout(BASE)
    back, coverage = converters.plan_of(BASE).backwards(converters.convert(BASE, layout)[0], target=layout)
    assert coverage.ok, coverage.describe()
    assert torch.equal(back["rel_pos_bias.relative_position_index"], layout["rel_pos_bias.relative_position_index"])
    assert converters.plan_of(BASE).unrestorable(layout) == ["lm_head.bias", "lm_head.weight"]


def test_published_files_get_one_cache_entry_each(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network here
    paths = {data2vec_vision.cache_path(c) for c in converters.cases("data2vec_vision")}
    assert len(paths) == 4  # the URLs share file names (checkpoint-799.pth, mp_rank_00_model_states.pt)
    with pytest.raises(sources.Unavailable) as info:
        data2vec_vision.original_file(BASE, download=True)
    assert str(data2vec_vision.cache_path(BASE)) in str(info.value) and f"--checkpoint {BASE.id}=PATH" in str(info.value)
    data2vec_vision.cache_path(BASE).parent.mkdir(parents=True)
    data2vec_vision.cache_path(BASE).touch()
    assert data2vec_vision.original_file(BASE, download=False) == data2vec_vision.cache_path(BASE)


@pytest.mark.parametrize("case", [BASE, BASE_FT], ids=lambda c: c.id)
def test_original_layout_differs_from_timms_beit_only_where_known(case):
    """Written independently of timm; timm's BEiT lacks the index buffers (non-persistent there)
    and the pre-training extras, and has every other key with the same shape."""
    import timm

    finetuned = case.params["finetuned"]
    kwargs = dict(use_rel_pos_bias=finetuned, use_shared_rel_pos_bias=not finetuned, use_abs_pos_emb=False, init_values=0.1)
    kwargs |= dict(num_classes=1000) if finetuned else dict(num_classes=0, use_fc_norm=False)
    with torch.device("meta"):
        timm_state = timm.create_model("beit_base_patch16_224", pretrained=False, **kwargs).state_dict()
    ours = converters.original_layout(case)
    only_ours = {k for k in ours if k not in timm_state}
    expected = {k for k in ours if k.endswith("relative_position_index")} | (set() if finetuned else {"mask_token", "lm_head.weight", "lm_head.bias"})
    assert only_ours == expected
    assert all(k in ours for k in timm_state)
    assert all(tuple(ours[k].shape) == tuple(v.shape) for k, v in timm_state.items())


def test_the_reference_is_the_fine_tuning_evaluation_not_the_old_scripts_squash():
    """The original's build_transform(is_train=False) written here as beit/datasets.py writes it
    (run_class_finetuning.py defaults): Resize(int(224 / (224 / 256)), interpolation=3), CenterCrop(224),
    Inception mean/std. The reference equals it; the old conversion script's 224x224 squash does not
    (measured: max abs diff 1.56 on chelsea, 2.0 on astronaut)."""
    from torchvision import transforms

    from vision_port_fixtures.images import photographs

    original = transforms.Compose([
        transforms.Resize(int(224 / (224 / 256)), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    squash = transforms.Compose([
        transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    photos = photographs()
    for case in data2vec_vision.CASES:
        reference = converters.source_transform(case)
        for name in ("chelsea", "astronaut"):
            image = photos[name].convert("RGB")
            assert torch.equal(reference(image), original(image)), f"{case.id} {name}"
            assert (squash(image) - original(image)).abs().max().item() > 1.5, f"{name}: the squash no longer differs"
