"""PVT v2: the original layout against the original code, the two LayerNorm eps transformers cannot hold,
the original evaluation, and another family's file given to a PVT v2 case."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import converters
from converters import checks, diagnose
from converters.families import pvt_v2

pytestmark = pytest.mark.pvt_v2  # the nightly workflow selects families by mark

B0, LINEAR = converters.get("pvt_v2_b0"), converters.get("pvt_v2_b2_linear")
# the mutants' small configurations (64 px): a forward in milliseconds
SMALL, SMALL_LINEAR = (dataclasses.replace(c, config={**c.config, **s.overrides})
                       for c, s in zip((B0, LINEAR), converters.get_family("pvt_v2").mutants))


def test_original_layout_has_the_original_models_keys():
    """Counted from whai362/PVT classification/pvt_v2.py (HEAD 57e2dfa, file last changed 5a6b890) built with each
    `pvt_v2_b*` constructor: keys, their order and shapes were equal to the declared layout."""
    counts = {c.id: len(converters.original_layout(c)) for c in converters.cases("pvt_v2")}
    assert counts == {"pvt_v2_b0": 178, "pvt_v2_b1": 178, "pvt_v2_b2": 334, "pvt_v2_b2_linear": 346,
                      "pvt_v2_b3": 574, "pvt_v2_b4": 834, "pvt_v2_b5": 1054}
    plain, linear = converters.original_layout(converters.get("pvt_v2_b2")), converters.original_layout(LINEAR)
    # the spatial reduction: a conv of kernel sr_ratio (8, 4, 2) where sr_ratio > 1, none in the last stage;
    # the linear variant reduces in every stage, by a 1x1 conv after pooling
    assert [tuple(plain[f"block{s}.0.attn.sr.weight"].shape) for s in (1, 2, 3)] == [(64, 64, 8, 8), (128, 128, 4, 4), (320, 320, 2, 2)]
    assert "block4.0.attn.sr.weight" not in plain and "block4.0.attn.norm.weight" not in plain
    assert [tuple(linear[f"block{s}.0.attn.sr.weight"].shape)[2:] for s in (1, 2, 3, 4)] == [(1, 1)] * 4
    assert set(linear) - set(plain) == {f"block4.{j}.attn.{m}.{e}" for j in range(3) for m in ("sr", "norm") for e in ("weight", "bias")}
    assert tuple(plain["block1.0.attn.kv.weight"].shape) == (128, 64)  # k and v fused


@pytest.mark.parametrize("linear", [False, True], ids=["b0", "b2_linear"])
def test_the_oracle_keeps_the_originals_two_eps_and_the_logits_check_gives_it_transformers_one(linear):
    """The original builds `nn.LayerNorm(dim)` (eps 1e-5) in OverlapPatchEmbed and Attention, and
    LayerNorm(eps=1e-6) elsewhere; timm keeps both. transformers has one eps: the difference is the
    case's declared output divergence, and the only one (the oracle with transformers' eps agrees within atol)."""
    assert "1e-5" in B0.output_divergence and "layer_norm_eps" in B0.output_divergence
    case = SMALL_LINEAR if linear else SMALL
    original = converters.synthetic_original(case)
    as_built = pvt_v2.oracle(case, original, original_eps=True)
    norms = pvt_v2.original_eps_norms(as_built)
    # 4 patch embeddings and one reduction norm per block: in the first three stages (sr_ratio > 1; 2 blocks
    # each here), or in all four (linear)
    assert len(norms) == 4 + (4 if linear else 3) * 2 and {m.eps for m in norms.values()} == {1e-5}
    others = {m.eps for name, m in as_built.named_modules() if isinstance(m, torch.nn.LayerNorm) and name not in norms}
    assert others == {1e-6} and case.config["layer_norm_eps"] == 1e-6

    hf_state, coverage = converters.convert(case, original)
    assert coverage.ok, coverage.describe()
    model = converters.build_model(case, hf_state).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model(pixel_values=pixels).logits
        same = checks.outputs_close(case.id, "logits vs timm with one eps", logits, pvt_v2.oracle(case, original)(pixels), case.atol)
        other = checks.outputs_close(case.id, "logits vs timm as built", logits, as_built(pixels), case.atol)
    assert same.ok, same.message
    # measured, the same on transformers 5.25 and 4.57.6: with transformers' eps 1.3e-06 (b0) and 8.9e-07 (linear),
    # as built 2.1e-05 and 6.5e-05 (atol 3e-06)
    assert not other.ok and other.figures["max_abs_diff"] > 5 * case.atol, other.figures


def test_the_original_evaluation_resizes_to_256_and_crops_224():
    """classification/datasets.py: Resize(int((256 / 224) * 224) = 256, bicubic), CenterCrop(224), ImageNet mean/std;
    the case's processor resizes the short side to int(224 / (224 / 256)) = 256 and crops 224 (timm's PVT v2
    configs crop at 0.9 instead; the published repos' processor squashes to 224 x 224)."""
    evaluation = converters.get_family("pvt_v2").evaluation_of(B0)
    assert evaluation.resize == 256 and evaluation.crop_size == 224 and evaluation.interpolation == "bicubic"
    for case in converters.cases("pvt_v2"):
        assert int(case.processor["size"]["shortest_edge"] / case.processor["crop_pct"]) == 256, case.id


def test_another_familys_file_gets_one_error_naming_the_case_the_file_and_what_it_matches(tmp_path):
    """What the plugin runs on every original it loads (fixtures/originals.py): load, then check the layout."""
    path = tmp_path / "convnextv2_atto_1k_224.pth"
    torch.save({"model": converters.synthetic_original(converters.get("convnextv2_atto_1k_224"))}, path)
    loaded = converters.load_original(B0, path)
    with pytest.raises(converters.CheckpointError) as error:
        diagnose.check_file(B0, path, loaded.state)
    message = str(error.value)
    assert B0.id in message and str(path) in message, message
    assert "matches the layout of convnextv2_atto_1k_224 (family convnextv2" in message, message


def test_the_linear_file_given_to_b2_is_refused_naming_b2_linear_and_coverage_names_every_difference():
    """b2_li is b2's layout but for the reductions (1x1 in every stage): 321 of its 346 tensors are b2's by
    key and shape, and the file is exactly b2_linear's layout, so the load refuses it in one error naming
    that case (converters.diagnose); key coverage, had it loaded, names the 12 keys b2 lacks and the
    reduction convs of another shape; the other way round, b2's file misses those 12."""
    b2 = converters.get("pvt_v2_b2")
    with pytest.raises(converters.CheckpointError, match=r"pvt_v2_b2: pvt_v2_b2_li.pth: not pvt_v2_b2's original layout: the file is exactly "
                                              r"the layout of pvt_v2_b2_linear \(family pvt_v2"):
        diagnose.check_file(b2, "pvt_v2_b2_li.pth", converters.original_layout(LINEAR))
    _, coverage = converters.convert(b2, converters.synthetic_original(LINEAR))
    assert not coverage.ok
    assert len(coverage.unexpected) == 12 and all(".layers.3.blocks." in k for k in coverage.unexpected), coverage.describe()
    assert sorted({k.split(".blocks.")[0] for k, *_ in coverage.shape_mismatches}) == [
        f"pvt_v2.encoder.layers.{i}" for i in range(3)], coverage.describe()
    assert {(a[2:], b[2:]) for _, a, b in coverage.shape_mismatches} == {((1, 1), (8, 8)), ((1, 1), (4, 4)), ((1, 1), (2, 2))}
    _, back = converters.convert(LINEAR, converters.synthetic_original(b2))
    assert len(back.missing) == 12 and not back.unexpected, back.describe()


def test_a_plain_state_dict_and_one_under_model_load_alike(tmp_path):
    """The released files are plain state dicts; main.py's loader also takes {'model': sd} (its own saves)."""
    state = converters.synthetic_original(B0)
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"model": state, "epoch": 299}, tmp_path / "wrapped.pth")
    plain, wrapped = (converters.load_original(B0, tmp_path / name) for name in ("plain.pth", "wrapped.pth"))
    assert plain.unwrapped is None and wrapped.unwrapped == "model"
    assert list(plain.state) == list(wrapped.state) == list(state)
    assert all(torch.equal(plain.state[k], wrapped.state[k]) for k in state)
