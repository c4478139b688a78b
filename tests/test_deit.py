"""DeiT: the original layouts against the original code, the distilled model's averaged heads, the
published repos' classes, and a distilled file given to a plain case (and the reverse)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch

import converters
from converters import CheckpointError, compat
from converters.families import deit
from vision_port_fixtures import originals

pytestmark = pytest.mark.deit  # the nightly workflow selects families by mark

PLAIN, DISTILLED = converters.get("deit_tiny_patch16_224"), converters.get("deit_tiny_distilled_patch16_224")


def _original_model(case: converters.Case) -> torch.nn.Module:
    """The model facebookresearch/deit models.py (HEAD 7e160fe) builds for the case: timm's
    VisionTransformer with its arguments; DistilledVisionTransformer adds a dist_token parameter,
    replaces pos_embed by one of N + 2 positions and adds head_dist (a Linear like head)."""
    from timm.models.vision_transformer import VisionTransformer

    c = case.config
    with torch.device("meta"):  # keys and shapes only
        model = VisionTransformer(img_size=c["image_size"], patch_size=16, embed_dim=c["hidden_size"], depth=12,
                                  num_heads=c["num_attention_heads"], mlp_ratio=4, qkv_bias=True,
                                  norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        if case.params["distilled"]:
            model.dist_token = torch.nn.Parameter(torch.zeros(1, 1, model.embed_dim))
            model.pos_embed = torch.nn.Parameter(torch.zeros(1, model.patch_embed.num_patches + 2, model.embed_dim))
            model.head_dist = torch.nn.Linear(model.embed_dim, model.num_classes)
    return model


def test_original_layout_has_the_original_models_keys():
    """Counted from the original models.py's models (built as `_original_model`): keys, their order
    and shapes equal the declared layout for every case (plain 152 keys, distilled 155)."""
    counts = {c.id: len(converters.original_layout(c)) for c in converters.cases("deit")}
    assert counts == {c.id: 155 if c.params["distilled"] else 152 for c in converters.cases("deit")} and len(counts) == 8
    for case in converters.cases("deit"):
        theirs = {k: tuple(v.shape) for k, v in _original_model(case).state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in converters.original_layout(case).items()}
        assert list(ours.items()) == list(theirs.items()), case.id


def test_the_published_classes_and_why_not_deit_for_image_classification():
    """transformers published the plain files as ViTForImageClassification and the distilled ones as
    DeiTForImageClassificationWithTeacher; DeiTForImageClassification cannot hold either original:
    a distillation token and N + 2 positions always, no distillation head."""
    assert {c.id: c.model_class for c in converters.cases("deit")} == {
        c.id: "DeiTForImageClassificationWithTeacher" if c.params["distilled"] else "ViTForImageClassification"
        for c in converters.cases("deit")}
    config = compat.get_class("DeiTConfig")(**PLAIN.config)
    keys = {k: tuple(v.shape) for k, v in compat.build_model("DeiTForImageClassification", config, device="meta").state_dict().items()}
    assert keys["deit.embeddings.position_embeddings"] == (1, 2 + 14 * 14, 192)
    assert "deit.embeddings.distillation_token" in keys and not any("distillation_classifier" in k for k in keys)


@pytest.fixture(scope="module")
def distilled():
    """The converted model's output and timm's, on the mutants' small distilled configuration."""
    case = replace(DISTILLED, config={**DISTILLED.config, **deit.SMALL})
    original = converters.synthetic_original(case)
    model = converters.build_model(case, converters.convert(case, original)[0])
    pixels = torch.randn(2, 3, case.image_size, case.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(pixel_values=pixels), converters.oracle(case, original)(pixels)


def test_the_distilled_eval_output_averages_both_heads_as_the_original(distilled):
    """The original's DistilledVisionTransformer.forward returns (head + head_dist) / 2 outside
    training, as timm's VisionTransformerDistilled (the oracle) does; transformers' WithTeacher
    returns the same average as `logits`. Measured on random weights (tf5 and tf4): 0.0 from timm's
    output, bit for bit; each head alone is far from it (so neither head alone would pass)."""
    ours, timm_output = distilled
    assert torch.equal(ours.logits, (ours.cls_logits + ours.distillation_logits) / 2)
    assert torch.equal(ours.logits, timm_output), (ours.logits - timm_output).abs().max().item()
    for head in (ours.cls_logits, ours.distillation_logits):
        assert (head - timm_output).abs().max().item() > 100 * DISTILLED.atol


def test_the_original_evaluation_resizes_by_the_crop_ratio():
    """datasets.py: Resize(int(input_size / 0.875)) then CenterCrop(input_size): 256 -> 224, 438 -> 384;
    the processor resizes the short side to the same and crops the same."""
    for case in converters.cases("deit"):
        evaluation = deit.evaluation(case)
        size = {224: 256, 384: 438}[case.image_size]
        assert evaluation.resize == size and evaluation.crop_size == case.image_size and not evaluation.warp
        assert case.processor["size"] == {"shortest_edge": size}
        assert case.processor["crop_size"] == {"height": case.image_size, "width": case.image_size}


def _load(case, path):
    return originals.from_files(case, {None: path}, published=False, sources={None: str(path)})


@pytest.mark.parametrize("case, other", [(PLAIN, DISTILLED), (DISTILLED, PLAIN)], ids=["distilled_to_plain", "plain_to_distilled"])
def test_a_distilled_file_given_to_a_plain_case_and_the_reverse_is_one_error(tmp_path, case, other):
    """Most keys agree (the blocks), so the share test alone lets them through: the file is exactly
    the other variant's layout, which the error names, with the case and the file."""
    path = tmp_path / f"{other.id}.pth"
    torch.save({"model": converters.synthetic_original(other)}, path)
    with pytest.raises(CheckpointError) as info:
        _load(case, path)
    message = str(info.value)
    assert message.startswith(f"{case.id}: {path}: not {case.id}'s original layout")
    assert f"the file is exactly the layout of {other.id} (family deit, every key and shape alike)" in message
    # what differs: the distilled file's extra token and head, or the plain file's shorter position table
    assert ("dist_token" in message and "head_dist.weight" in message) if other is DISTILLED else "pos_embed" in message, message


def test_the_right_file_loads_and_a_stray_key_is_left_to_key_coverage(tmp_path):
    """The twin rule refuses only a file that is another case's layout: the case's own file loads,
    and one extra key (no case's layout) loads too, for key coverage to list."""
    state = converters.synthetic_original(PLAIN)
    torch.save({"model": state}, tmp_path / "right.pth")
    assert set(_load(PLAIN, tmp_path / "right.pth").state) == set(state)
    torch.save({"model": {**state, "stray": torch.zeros(1)}}, tmp_path / "stray.pth")
    _, coverage = converters.convert(PLAIN, _load(PLAIN, tmp_path / "stray.pth").state)
    assert coverage.unconsumed == ["stray"]
