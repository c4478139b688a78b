"""ConvNeXt-V2, and the teeth of the harness's checks shown on it: a check that never fails proves
nothing, so deliberately broken ConvNeXt-V2 plans (two same-shape keys swapped, GRN reshaped like
timm's filter, a bias dropped, an operation without its inverse, a zeroed bias) fail the right
check, with a message naming the offending keys or giving the max abs diff and its tolerance."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import converters
from converters import checks
from converters.localise import first_divergence
from converters.plan import Drop, Plan, Rename, Reshape, Transpose

pytestmark = pytest.mark.convnextv2  # the nightly workflow selects families by mark

# A small configuration of the real layout: same code paths, milliseconds per forward.
CASE = dataclasses.replace(
    converters.get("convnextv2_atto_1k_224"),
    config={**converters.get("convnextv2_atto_1k_224").config, "depths": [1, 1, 2, 1], "hidden_sizes": [8, 16, 32, 64], "num_labels": 10},
)
PIXELS = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def original():
    return converters.synthetic_original(CASE)


def run_checks(plan: Plan, original) -> dict[str, checks.Check]:
    converted, coverage = plan.forwards(original, target=converters.target_layout(CASE))
    results = {"key_coverage": checks.key_coverage(CASE.id, coverage), "round_trip": checks.round_trip(CASE.id, plan, converted, original)}
    if coverage.ok:
        model = converters.build_model(CASE, converted)
        with torch.inference_mode():
            ours, reference = model(pixel_values=PIXELS).logits, converters.oracle(CASE, original)(PIXELS)
        results["logits"] = checks.outputs_close(CASE.id, "logits vs the oracle", ours, reference, CASE.atol)
    return results


def test_the_real_plan_passes_every_check(original):
    results = run_checks(converters.plan_of(CASE), original)
    assert all(r.ok for r in results.values()), {k: r.message for k, r in results.items() if not r.ok}


def test_two_same_shape_keys_swapped_fail_logits(original):
    # LayerNorm bias and depthwise-conv bias of one block: same shape (C,), so coverage and the
    # (still reversible) round trip pass; only the outputs can tell.
    block = "convnextv2.encoder.stages.0.layers.0."
    swapped = Plan(renames=(Rename("stages.0.0.norm.bias", block + "dwconv.bias"),
                            Rename("stages.0.0.dwconv.bias", block + "layernorm.bias")) + converters.plan_of(CASE).renames)
    results = run_checks(swapped, original)
    assert results["key_coverage"].ok and results["round_trip"].ok
    assert not results["logits"].ok
    assert "max abs diff" in results["logits"].message and "> atol 1e-05" in results["logits"].message


def test_grn_reshaped_like_timm_fails_key_coverage(original):
    # timm flattens GRN gamma/beta to (C,); transformers keeps the original (1, 1, 1, C).
    reshaped = dataclasses.replace(converters.plan_of(CASE), ops=(Reshape("stages.{i}.{j}.grn.gamma", (-1,), (1, 1, 1, -1)),))
    result = run_checks(reshaped, original)["key_coverage"]
    assert not result.ok
    layout = converters.target_layout(CASE)
    grn = [k for k in layout if k.endswith("grn.weight")]
    for key in grn:  # every offending key is listed, not only the first
        n = layout[key].shape[-1]
        assert f"shape mismatch: {key} produced ({n},) expected (1, 1, 1, {n})" in result.message
    assert result.message.count("shape mismatch") == len(grn)


def test_dropped_bias_fails_key_coverage(original):
    dropped = dataclasses.replace(converters.plan_of(CASE), ops=(Drop("stages.{i}.{j}.pwconv1.bias"),))
    result = run_checks(dropped, original)["key_coverage"]
    assert not result.ok
    blocks = sum(CASE.config["depths"])
    assert result.message.count("target key not produced") == blocks
    assert "convnextv2.encoder.stages.2.layers.1.pwconv1.bias" in result.message


@dataclasses.dataclass(frozen=True)
class OneWayTranspose(Transpose):
    """A transposition whose declared inverse forgets to transpose back."""

    def backward(self, state):
        return state


def test_an_operation_without_its_exact_inverse_fails_round_trip(original):
    # The 7x7 depthwise kernels transposed: every key and shape still fits, so coverage passes;
    # the round trip (and the logits) must not.
    one_way = dataclasses.replace(converters.plan_of(CASE), ops=(OneWayTranspose("stages.{i}.{j}.dwconv.weight", (2, 3)),))
    results = run_checks(one_way, original)
    assert results["key_coverage"].ok and not results["round_trip"].ok and not results["logits"].ok
    message = results["round_trip"].message
    assert "tensor changed: stages.0.0.dwconv.weight" in message and "> tolerance 0" in message
    assert message.count("tensor changed") == sum(CASE.config["depths"]) and results["round_trip"].figures["max_abs_diff"] > 0


def test_zeroed_bias_fails_logits(original):
    # A bias silently replaced by zeros keeps every key and shape: the logits must catch it.
    broken = dict(original, **{"stages.3.0.pwconv2.bias": torch.zeros_like(original["stages.3.0.pwconv2.bias"])})
    converted, _ = converters.plan_of(CASE).forwards(broken)
    model = converters.build_model(CASE, converted)
    with torch.inference_mode():
        ours, reference = model(pixel_values=PIXELS).logits, converters.oracle(CASE, original)(PIXELS)
    assert not checks.outputs_close(CASE.id, "logits", ours, reference, CASE.atol).ok


def test_divergence_is_localised_to_the_first_broken_module(original):
    block = "convnextv2.encoder.stages.2.layers.1."
    swapped = Plan(renames=(Rename("stages.2.1.norm.bias", block + "dwconv.bias"),
                            Rename("stages.2.1.dwconv.bias", block + "layernorm.bias")) + converters.plan_of(CASE).renames)
    converted, _ = swapped.forwards(original)
    model, oracle = converters.build_model(CASE, converted), converters.oracle(CASE, original)
    where = first_divergence(model, oracle, {"pixel_values": PIXELS}, (PIXELS,), CASE.atol)
    assert where.startswith(f"first divergence at {block}dwconv (oracle stages.2.blocks.1.conv_dw)"), where
    # and the real plan has no divergent module at all
    model = converters.build_model(CASE, converters.plan_of(CASE).forwards(original)[0])
    assert first_divergence(model, oracle, {"pixel_values": PIXELS}, (PIXELS,), CASE.atol).startswith("no paired module diverges")
