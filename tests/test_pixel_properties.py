"""Pixel property: for generated image sizes and aspect ratios, the source preprocessing
(`converters.source_transform`) and the transformers processor (`converters.image_processor`)
give identical pixel values, except where a documented cause predicts otherwise.

The prediction comes from modelling each pipeline's arithmetic on the image size, written here
from the libraries' sources (FIELD_NOTES, "Image processors and pixel equality"):
- resize: torchvision `Resize(int)` and transformers `shortest_edge` both give the short side the
  requested size and the long side `int(size * long / short)`; `Resize((h, w))` and
  `{"height", "width"}` resize to exactly that; transformers' ConvNeXt processor first resizes
  the short side to `int(shortest_edge / crop_pct)` below 384 and warps to a square from 384 on;
- centre crop: torchvision's `CenterCrop` (timm) offsets by `int(round((H - c) / 2))`, rounding
  half to even (5.5 -> 6); transformers crops at `(H - c) // 2`. They disagree exactly when the
  leftover `H - c` is 4k + 3;
- the resampling filter and the normalisation constants of both sides.
Two pipelines with the same modelled geometry must agree bit for bit; different geometry must
give different pixels. Both directions are asserted: a predicted divergence that does not occur
fails as surely as an unpredicted one.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from hypothesis import event
from hypothesis import strategies as st
from torchvision import transforms as tv
from torchvision.transforms.functional import pil_modes_mapping

import converters
from fixtures.plugin import family_params
from converters import compat
from fixtures.images import synthetic_image
from hypothesis_profiles import examples, given


class NotModelled(Exception):
    """A preprocessing step whose arithmetic this test does not model."""


# --------------------------------------------------------------------------- the source side


def _tv_shortest_edge(height, width, size):
    # torchvision.transforms.functional._compute_resized_output_size, size given for the short side
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def source_geometry(transform, height: int, width: int) -> list[tuple]:
    steps = []
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, tv.Resize):
            if t.max_size is not None:
                raise NotModelled(f"{t!r}: max_size")
            size = [t.size] if isinstance(t.size, int) else list(t.size)
            height, width = _tv_shortest_edge(height, width, size[0]) if len(size) == 1 else tuple(size)
            steps.append(("resize", (height, width), int(pil_modes_mapping[t.interpolation])))
        elif isinstance(t, tv.CenterCrop):
            ch, cw = t.size
            if ch > height or cw > width:
                raise NotModelled(f"{t!r} on a {height}x{width} image pads")
            top, left = int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))  # half to even
            steps.append(("crop", (top, left, ch, cw)))
            height, width = ch, cw
        elif isinstance(t, tv.ToTensor) or type(t).__name__ == "MaybeToTensor":  # timm's subclass
            steps.append(("rescale", _f32(1 / 255)))
        elif isinstance(t, tv.Normalize):
            steps.append(("normalize", _f32(*t.mean), _f32(*t.std)))
        else:
            raise NotModelled(f"source step {t!r}")
    return _canonical(steps)


# --------------------------------------------------------------------------- the transformers side


def _hf_resize(height, width, size) -> tuple[int, int]:
    if size.get("shortest_edge") and not size.get("longest_edge"):
        # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if size.get("height") and size.get("width") and len([v for v in size.values() if v]) == 2:
        return size["height"], size["width"]
    raise NotModelled(f"resize to {size}")


def _hf_crop(height, width, ch, cw) -> tuple:
    if ch > height or cw > width:
        raise NotModelled(f"centre crop {ch}x{cw} of a {height}x{width} image pads")
    return ("crop", ((height - ch) // 2, (width - cw) // 2, ch, cw))  # floor


# do_convert_rgb changes nothing for the RGB images generated here
MODELLED_STEPS = {"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"}


def hf_geometry(processor, height: int, width: int) -> list[tuple]:
    config = processor.to_dict()
    # Modelled from the processor's config keys (do_resize, size, do_center_crop, crop_size, ...);
    # ConvNeXt's processor has a resize of its own (crop_pct), modelled by its class.
    kind = config.get("image_processor_type", type(processor).__name__).removesuffix("Pil")
    unknown = sorted(k for k, v in config.items() if k.startswith("do_") and v and k not in MODELLED_STEPS)
    if unknown:
        raise NotModelled(f"processor {kind} steps {unknown}")
    if config.get("do_pad"):
        raise NotModelled(f"{kind} with do_pad")
    size = {k: v for k, v in dict(config.get("size") or {}).items() if v}
    steps, resample = [], int(config["resample"])
    if config.get("do_resize"):
        if kind == "ConvNextImageProcessor" and size.get("shortest_edge", 384) < 384:
            # its own resize: short side to shortest_edge / crop_pct, then a centre crop
            edge = size["shortest_edge"]
            height, width = _hf_resize(height, width, {"shortest_edge": int(edge / config["crop_pct"])})
            steps += [("resize", (height, width), resample), _hf_crop(height, width, edge, edge)]
            height, width = edge, edge
        elif kind == "ConvNextImageProcessor":  # from 384 on: warp to a square, no crop
            height = width = size["shortest_edge"]
            steps.append(("resize", (height, width), resample))
        else:
            height, width = _hf_resize(height, width, size)
            steps.append(("resize", (height, width), resample))
    if config.get("do_center_crop"):
        crop = config["crop_size"]
        steps.append(_hf_crop(height, width, crop["height"], crop["width"]))
    if config.get("do_rescale"):
        steps.append(("rescale", _f32(config["rescale_factor"])))
    if config.get("do_normalize"):
        steps.append(("normalize", _f32(*config["image_mean"]), _f32(*config["image_std"])))
    return _canonical(steps)


# --------------------------------------------------------------------------- prediction


def _f32(*values) -> tuple:
    return tuple(torch.tensor(values, dtype=torch.float32).tolist())


def _canonical(steps: list[tuple]) -> list[tuple]:
    """Drop steps that do nothing: a crop that keeps the whole image."""
    out, size = [], None
    for step in steps:
        if step[0] == "resize":
            size = step[1]
        if step[0] == "crop":
            top, left, h, w = step[1]
            if (top, left) == (0, 0) and (h, w) == size:
                continue
            size = (h, w)
        out.append(step)
    return out


def predicted_causes(source: list[tuple], hf: list[tuple]) -> list[str]:
    """The documented causes that make the two pipelines differ; empty when they must agree bit
    for bit. The one documented cause is the centre-crop offset rounding (same crop size, other
    offset); any other difference (resize, filter, mean/std, steps) is a misconfigured processor,
    not a prediction, and fails here."""
    if source == hf:
        return []
    kinds = lambda steps: [s[0] for s in steps]  # noqa: E731
    assert kinds(source) == kinds(hf), f"undocumented difference: source steps {source}, transformers steps {hf}"
    causes, undocumented = [], []
    for a, b in zip(source, hf):
        if a == b:
            continue
        if a[0] == "crop" and a[1][2:] == b[1][2:]:
            causes.append(f"centre-crop offset: source (top, left) {a[1][:2]} (round half to even), transformers {b[1][:2]} (floor)")
        else:
            undocumented.append(f"{a[0]}: source {a[1:]} vs transformers {b[1:]}")
    assert not undocumented, "undocumented difference (a misconfigured processor?): " + "; ".join(undocumented)
    return causes


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
    from fixtures.images import SIZES

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
