"""BEiT: the original layout against the original code, the relative position index transformers and
timm recompute, the two transformers lines' names, the original evaluation, and wrong files."""

from __future__ import annotations

import argparse

import pytest
import torch

import converters
from converters import CheckpointError, compat, relpos_vit
from converters.families import beit

pytestmark = pytest.mark.beit  # the nightly workflow selects families by mark

BASE, BASE_384, BASE_22K, LARGE_512 = (converters.get(c) for c in (
    "beit_base_patch16_224", "beit_base_patch16_384", "beit_base_patch16_224_pt22k_ft22k", "beit_large_patch16_512"))


def file_like(case) -> dict[str, torch.Tensor]:
    """Real tensors in the case's original layout: what loading a file of that layout gives."""
    return {k: v if not v.is_meta else torch.zeros(v.shape) for k, v in converters.original_layout(case).items()}


def test_original_layout_has_the_original_models_keys():
    """Counted from microsoft/unilm beit/modeling_finetune.py (commit 006195f) `VisionTransformer` as
    run_class_finetuning.py builds it (qkv_bias, layer scale, use_rel_pos_bias, no absolute position
    embedding, mean pooling): cls_token, patch_embed.proj (2), 17 entries a block (gamma_1/2, norm1 (2),
    q_bias, v_bias, the bias table, its index buffer, qkv.weight, proj (2), norm2 (2), fc1 (2), fc2 (2)),
    fc_norm (2), head (2): base 3 + 12 x 17 + 4 = 211, large 3 + 24 x 17 + 4 = 415."""
    counts = {c.id: len(converters.original_layout(c)) for c in converters.cases("beit")}
    assert counts == {"beit_base_patch16_224": 211, "beit_base_patch16_384": 211, "beit_base_patch16_224_pt22k_ft22k": 211,
                      "beit_large_patch16_224": 415, "beit_large_patch16_384": 415, "beit_large_patch16_512": 415,
                      "beit_large_patch16_224_pt22k_ft22k": 415}
    layout = converters.original_layout(LARGE_512)
    # (2 x 32 - 1)² distances + cls->patch, patch->cls, cls->cls, one column per head
    assert tuple(layout["blocks.0.attn.relative_position_bias_table"].shape) == (63 * 63 + 3, 16)
    assert tuple(layout["blocks.23.attn.relative_position_index"].shape) == (32 * 32 + 1,) * 2
    assert tuple(converters.original_layout(BASE_22K)["head.weight"].shape) == (21841, 768)
    assert not any(k.startswith(("pos_embed", "mask_token", "rel_pos_bias", "norm.", "lm_head")) for k in layout)


@pytest.mark.parametrize("case", [BASE, BASE_22K], ids=lambda c: c.id)
def test_original_layout_differs_from_timms_beit_only_by_the_index_buffers(case):
    """Written from the original code; timm's BEiT (not ours) holds every other key with the same
    shape and lacks only the index buffers (non-persistent there)."""
    import timm

    with torch.device("meta"):
        theirs = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=case.config["num_labels"]).state_dict()
    ours = converters.original_layout(case)
    assert {k for k in ours if k not in theirs} == {f"blocks.{i}.attn.relative_position_index" for i in range(12)}
    assert set(theirs) <= set(ours) and all(tuple(ours[k].shape) == tuple(v.shape) for k, v in theirs.items())


@pytest.mark.parametrize("window", [14, 24, 32])  # the published 224, 384 and 512 px geometries
def test_the_rebuilt_index_is_the_one_timm_and_transformers_compute(window):
    """The plan drops the original's index buffers and rebuilds them on the way back: they must be
    what timm and transformers compute for the same window (neither saves them)."""
    from timm.models.beit import gen_relative_position_index

    ours = relpos_vit.relative_position_index(window)
    assert ours.dtype == torch.int64 and torch.equal(ours, gen_relative_position_index((window, window)))
    config = compat.get_class("BeitConfig")(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                                            image_size=16 * window, patch_size=16, use_relative_position_bias=True)
    model = compat.build_model("BeitModel", config)
    bias = next(m for m in model.modules() if type(m).__name__ == "BeitRelativePositionBias")
    theirs = bias.generate_relative_position_index((window, window))  # a static method on 5.x, a method on 4.57
    assert torch.equal(ours, theirs)


def test_the_installed_lines_names_for_the_per_block_table():
    """transformers 5 refactored BEiT (`layers.{i}.attention.q_proj`, the bias table on the layer);
    4.57 keeps the BERT-style names under the attention, as data2vec-vision does on both lines."""
    _, coverage = converters.convert(BASE, converters.original_layout(BASE))
    assert coverage.ok, coverage.describe()
    plan = converters.plan_of(BASE)
    table = plan.forwards({"blocks.3.attn.relative_position_bias_table": torch.zeros(732, 12)})[0]
    expected = ("beit.layers.3.relative_position_bias.relative_position_bias_table" if compat.MAJOR >= 5 else
                "beit.encoder.layer.3.attention.attention.relative_position_bias.relative_position_bias_table")
    assert list(table) == [expected]
    d2v = converters.plan_of(converters.get("data2vec_vision_base_ft1k"))
    assert list(d2v.forwards({"blocks.3.attn.relative_position_bias_table": torch.zeros(732, 12)})[0]) == [
        "data2vec_vision.encoder.layer.3.attention.attention.relative_position_bias.relative_position_bias_table"]


def test_the_evaluation_crops_below_384_and_keeps_the_whole_short_side_from_384():
    """beit/datasets.py: crop_pct None -> 224/256 below 384 px (short side 256, crop 224) and 1.0 from
    384 up (short side 384 or 512, crop the same); the processor declares the same sizes."""
    for case, resize in ((BASE, 256), (BASE_384, 384), (LARGE_512, 512)):
        evaluation = beit.evaluation(case)
        assert evaluation.resize == resize and evaluation.crop_size == case.image_size and not evaluation.warp, case.id
        assert case.processor["size"] == {"shortest_edge": resize}, case.id
        assert case.processor["crop_size"] == {"height": case.image_size, "width": case.image_size}, case.id


def test_the_published_repos_squash_is_not_the_original_evaluation():
    """transformers' conversion saved BeitImageProcessor(size=image, resample=bilinear,
    do_center_crop=False): a square warp, not the original's short side + centre crop."""
    from torchvision import transforms

    from vision_port_fixtures.images import photographs

    squash = transforms.Compose([transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BILINEAR),
                                 transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    reference = converters.source_transform(BASE)
    image = photographs()["chelsea"].convert("RGB")
    assert (squash(image) - reference(image)).abs().max().item() > 1.0


def test_a_file_of_another_family_is_refused_naming_what_it_matches(tmp_path):
    swin = converters.get("swin_tiny_patch4_window7_224")
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": file_like(swin)}, path)
    from converters import diagnose

    with pytest.raises(CheckpointError) as info:
        diagnose.check_file(BASE, path, converters.load_original(BASE, path).state)
    message = str(info.value)
    assert BASE.id in message and str(path) in message
    assert f"matches the layout of {swin.id} (family swin, 100% of keys and shapes alike)" in message, message


def test_a_22k_file_for_a_1k_case_is_refused_naming_the_22k_case_and_the_head(tmp_path):
    """Same architecture, other classifier: 209 of its 211 keys and shapes are the case's, and the file
    is exactly the 22k case's layout: the load refuses it in one error naming that case and the head
    (converters.diagnose); key coverage, had it loaded, names the head too."""
    from converters import diagnose

    state = file_like(BASE_22K)
    path = tmp_path / "beit_base_patch16_224_pt22k_ft22k.pth"
    with pytest.raises(CheckpointError, match=rf"{BASE.id}: .*{path.name}: not {BASE.id}'s original layout: the file is exactly "
                                              rf"the layout of {BASE_22K.id} .*first of another shape: head.bias, head.weight"):
        diagnose.check_file(BASE, path, state)
    _, coverage = converters.convert(BASE, state)
    assert sorted(k for k, _, _ in coverage.shape_mismatches) == ["classifier.bias", "classifier.weight"]
    assert not coverage.missing and not coverage.unconsumed and not coverage.unexpected
    assert "shape mismatch: classifier.weight produced (21841, 768) expected (1000, 768)" in coverage.problems()


class Opaque:
    """A harmless class the allow-list does not name: loading must refuse it, not construct it."""


def test_training_arguments_are_allowed_and_nothing_else(tmp_path):
    path = tmp_path / "beit_base_patch16_224_pt22k_ft22kto1k.pth"
    original = {"cls_token": torch.randn(1, 1, 768)}
    torch.save({"model": original, "args": argparse.Namespace(model="beit_base_patch16_224", input_size=224)}, path)
    loaded = converters.load_original(BASE, path)
    assert loaded.unwrapped == "model" and loaded.ignored == ["args"]
    assert torch.equal(loaded.state["cls_token"], original["cls_token"])
    torch.save({"model": original, "args": argparse.Namespace(lr=2e-5), "scaler": Opaque()}, path)
    with pytest.raises(CheckpointError) as info:
        converters.load_original(BASE, path)
    assert f"{Opaque.__module__}.Opaque" in info.value.reason and BASE.id in str(info.value) and str(path) in str(info.value)


def test_a_data2vec_vision_fine_tuned_file_is_a_beit_file():
    """The shared architecture: data2vec-vision's fine-tuned layout is BEiT's key for key (same
    shapes at the same size and classes), so no check can tell the files apart; the two plans
    differ only in the transformers base model's name on 4.57 (`beit.` / `data2vec_vision.`)."""
    d2v = converters.get("data2vec_vision_base_ft1k")
    ours, theirs = converters.original_layout(BASE), converters.original_layout(d2v)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    if compat.MAJOR == 4:
        state = converters.synthetic_original(BASE)
        mine = converters.convert(BASE, state)[0]
        other = converters.convert(d2v, state)[0]
        assert {k.replace("data2vec_vision.", "beit."): v for k, v in other.items()}.keys() == mine.keys()
        assert all(torch.equal(mine[k.replace("data2vec_vision.", "beit.")], v) for k, v in other.items())
