"""Pixel property: for generated image sizes and aspect ratios, the source preprocessing
(`converters.source_transform`) and the transformers processor (`converters.image_processor`)
give identical pixel values, except where a documented cause predicts otherwise.

The prediction comes from modelling each pipeline's arithmetic on the image size
(`converters.pixels`, written from the libraries' sources; the harness's pixel check uses it too).
Two pipelines with the same modelled geometry must agree bit for bit; different geometry must
give different pixels. Both directions are asserted: a predicted divergence that does not occur
fails as surely as an unpredicted one.
"""

from __future__ import annotations

import functools
import json

import pytest
from hypothesis import event, strategies as st

import converters
from converters import compat
from converters.pixels import NotModelled, hf_geometry, predicted_causes, source_geometry
from hypothesis_profiles import examples, given
from vision_port_fixtures.images import synthetic_image
from vision_port_fixtures.plugin import family_params

# --------------------------------------------------------------------------- pipelines per family


FAMILIES = family_params()


@functools.cache
def pipelines(family) -> dict[str, tuple]:
    """The family's distinct preprocessing pipelines: label -> (processor, source transform).
    Cases that share both (ConvNeXt-V2 has 18 cases, 3 pipelines) are tested once."""
    distinct, members = {}, {}
    for case in family.cases:
        processor, transform = converters.image_processor(case), converters.source_transform(case)
        key = (repr(transform), json.dumps(processor.to_dict(), sort_keys=True, default=str))
        distinct.setdefault(key, (processor, transform))
        members.setdefault(key, []).append(case.id)
    return {f"{ids[0]} (+{len(ids) - 1} cases)": distinct[key] for key, ids in members.items()}


def _pipelines_or_skip(family) -> dict[str, tuple]:
    try:
        found = pipelines(family)
    except compat.Unsupported as e:  # e.g. ViT-hybrid's processor left transformers 5.x
        pytest.skip(f"{family.name}: {e}")
    for label, (processor, transform) in found.items():
        try:
            source_geometry(transform, 480, 640), hf_geometry(processor, 480, 640)
        except NotModelled as e:
            pytest.skip(f"{family.name} {label}: no arithmetic model for {e}; extend {__file__}")
    return found


def run(processor, transform, width: int, height: int, seed: int = 0):
    image = synthetic_image(width, height, seed)
    ours = processor(images=image, return_tensors="pt")["pixel_values"][0]
    theirs = transform(image)
    return ours, theirs


def assert_prediction(label, processor, transform, width, height, seed=0):
    source, hf = source_geometry(transform, height, width), hf_geometry(processor, height, width)
    causes = predicted_causes(source, hf)
    ours, theirs = run(processor, transform, width, height, seed)
    same_shape = ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item() if same_shape else float("inf")
    where = f"{label}, image {width}x{height}"
    if causes:
        assert diff > 0, f"{where}: predicted divergence did not occur (max abs diff 0): {'; '.join(causes)}"
    else:
        shapes = f"shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}" if not same_shape else f"max abs diff {diff:.3g} > tolerance 0"
        assert diff == 0.0, f"{where}: pixel values differ with no predicted cause ({shapes}); geometry {source}"
    return causes


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data(), width=st.integers(16, 1024), height=st.integers(16, 1024), seed=st.integers(0, 2**16))
@examples(fast=25, thorough=400)
def test_pixels_agree_exactly_unless_the_arithmetic_predicts_a_divergence(family, data, width, height, seed):
    found = _pipelines_or_skip(family)
    label = data.draw(st.sampled_from(sorted(found)), label="pipeline")
    processor, transform = found[label]
    causes = assert_prediction(label, processor, transform, width, height, seed)
    event("predicted divergence" if causes else "predicted agreement")


@pytest.mark.parametrize("family", FAMILIES)
def test_both_predictions_occur_on_sizes_the_arithmetic_picks(family):
    """Deterministic companion: for each pipeline the model picks the first landscape and portrait
    sizes (widths/heights 480-540 against 480) it predicts to agree and to diverge, and both
    outcomes are observed. A pipeline whose arithmetic never diverges (a square warp) only has
    sizes to agree on."""
    found = _pipelines_or_skip(family)
    for label, (processor, transform) in sorted(found.items()):
        sizes = [(w, 480) for w in range(480, 541)] + [(480, h) for h in range(480, 541)]
        picked = {}
        for width, height in sizes:
            diverges = bool(predicted_causes(source_geometry(transform, height, width), hf_geometry(processor, height, width)))
            picked.setdefault((diverges, width >= height), (width, height))
        for (diverges, _), (width, height) in sorted(picked.items()):
            assert bool(assert_prediction(label, processor, transform, width, height)) == diverges


@pytest.mark.parametrize("family", FAMILIES)
def test_documented_divergences_are_the_predicted_ones(family):
    """A case documents a pixel divergence (`Case.pixel_divergence`, which turns the harness's
    pixel check into a strict expected failure) exactly when the arithmetic predicts one on the
    harness's test images (fixtures/images.py)."""
    from vision_port_fixtures.images import SIZES

    _pipelines_or_skip(family)
    wrong = []
    for case in family.cases:
        processor, transform = converters.image_processor(case), converters.source_transform(case)
        predicted = {f"{w}x{h}": causes for w, h in SIZES
                     if (causes := predicted_causes(source_geometry(transform, h, w), hf_geometry(processor, h, w)))}
        documented = getattr(case, "pixel_divergence", None)
        if bool(predicted) != bool(documented) or (documented and "crop" not in documented):
            wrong.append(f"{case.id}: documented {documented!r}, predicted {predicted or 'none'}")
    assert not wrong, "documented and predicted pixel divergences differ:\n" + "\n".join(wrong)


def _agreeing_case():
    """The first case of the registry whose modelled pipeline agrees with its source on 640x480."""
    for case in converters.cases():
        try:
            processor, transform = converters.image_processor(case), converters.source_transform(case)
            if not predicted_causes(source_geometry(transform, 480, 640), hf_geometry(processor, 480, 640)):
                return case, transform
        except (NotModelled, compat.Unsupported):
            continue
    pytest.fail("no case of the registry has a modelled pipeline that agrees with its source")


def test_a_misconfigured_processor_is_not_explained_away():
    """Teeth: a processor with the wrong mean, or the wrong resize, is no documented cause: the
    prediction itself fails, naming the step, instead of predicting a divergence."""
    case, transform = _agreeing_case()
    size = dict(case.processor["size"])
    wrong_size = {k: v - 32 for k, v in size.items()}  # shortest_edge, or height and width
    wrong_mean = [m + 0.1 for m in case.processor["image_mean"]]
    for change, step in (({"image_mean": wrong_mean}, "normalize"), ({"size": wrong_size}, "resize")):
        processor = compat.image_processor_class(case.processor_class)(**{**case.processor, **change})
        with pytest.raises(AssertionError, match=f"undocumented difference.*{step}"):
            assert_prediction(f"{case.id} misconfigured", processor, transform, 640, 480)
