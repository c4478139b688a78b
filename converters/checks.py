"""The harness's checks as plain functions: usable from a script, from the pytest cases and from
the mutation tests, so that a check shown to catch a broken plan is the check the cases run.

Each returns a `Check`: `ok`, the figures (max abs diff, tolerance, ...) and a message that says
what failed with the max abs diff and its tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from .metrics import compare, max_abs_diff
from .plan import DESCRIBED, Coverage, Plan
from .quote import quote


@dataclass
class Check:
    ok: bool
    message: str
    figures: dict = field(default_factory=dict)


def key_coverage(case_id: str, coverage: Coverage) -> Check:
    problems = coverage.problems()
    message = f"{case_id}: key coverage failed, {len(problems)} problems:\n" + coverage.describe()
    return Check(coverage.ok, message, {"problems": len(problems), "dropped": coverage.dropped})


def outputs_close(case_id: str, what: str, actual: torch.Tensor, expected: torch.Tensor, atol: float) -> Check:
    if actual.shape != expected.shape:
        return Check(False, f"{case_id}: {what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}")
    figures = compare(actual, expected) | {"atol": atol}
    diff = figures["max_abs_diff"]
    ok = diff <= atol  # NaN compares False: a NaN output fails
    return Check(ok, f"{case_id}: {what}, max abs diff {diff:.3g} > atol {atol:.1g}", figures)


def round_trip(case_id: str, plan: Plan, converted: Mapping, original: Mapping) -> Check:
    """Backwards after forwards gives the original tensors bit for bit (dtype included)."""
    back, coverage = plan.backwards(converted, target=original)
    skipped = set(plan.unrestorable(original))
    changed, worst = [], 0.0
    for key, value in original.items():
        if key not in back or key in skipped:
            continue
        diff = max_abs_diff(back[key], value)
        worst = max(worst, diff)
        if back[key].dtype != value.dtype or diff != 0.0:
            changed.append(f"tensor changed: {quote(key)} ({back[key].dtype} {tuple(back[key].shape)} vs {value.dtype} "
                           f"{tuple(value.shape)}, max abs diff {diff:.3g})")
    problems = coverage.problems() + changed
    failed = [f"{len(items)} {what}" for what, items in (
        ("converted keys no rule maps back", coverage.unconsumed), ("original keys not given back", coverage.missing),
        ("keys given back that the original lacks", coverage.unexpected), ("of another shape", coverage.shape_mismatches),
        ("given back twice", coverage.duplicates), (f"tensors changed (max abs diff {worst:.3g} > tolerance 0)", changed)) if items]
    listed = ([coverage.describe()] if not coverage.ok else []) + changed[:DESCRIBED]
    if len(changed) > DESCRIBED:
        listed.append(f"... and {len(changed) - DESCRIBED} more changed tensors")
    message = f"{case_id}: round trip is not exact: {'; '.join(failed)}:\n" + "\n".join(listed)
    figures = {"max_abs_diff": worst, "atol": 0.0, "not_restorable": sorted(skipped)}
    return Check(not problems, message, figures)



# The default backend of transformers 5.x's AutoImageProcessor is torchvision's, which resamples
# differently from PIL (the original evaluation's). Measured on every default case (random
# weights, transformers 5.24) on the photographs: 1 grey level (224-px crops) to 2 (384 px) of the
# 8-bit input, outputs' cosine similarity >= 0.999999 with the original evaluation's, max abs diff
# up to 9.5e-3 (data2vec-vision base hidden states). A wrong mean, resample or crop goes far past
# both (tests/test_as_loaded.py). A PIL processor (5.x backend="pil", 4.x's default) is held to 0
# grey levels and the case's atol.
DEFAULT_BACKEND_GREY_LEVELS = 2.0
DEFAULT_BACKEND_MIN_COSINE = 0.9999


def grey_levels(diff: torch.Tensor, image_std) -> float:
    """A normalised pixel difference in levels of the 8-bit image (x std x 255, worst channel);
    rounded to 1e-3, float noise off whole levels."""
    std = torch.tensor(image_std, dtype=torch.float64).view(-1, 1, 1)
    return round((diff.double().abs() * std * 255).amax().item(), 3) if diff.numel() else 0.0


def as_loaded(case, folder, oracle, source_transform, photographs: dict, pictures: dict | None = None) -> Check:
    """The saved `folder` loaded as users load it (`as_loaded.load_as_users_do`) against the original
    evaluation on `photographs` (name -> PIL image): per processor path ("default", and "pil" on
    5.x) pixel grey levels, output max abs diff, cosine, top-1/top-5 agreement; the pipeline's top-1.
    Given a `pictures` dict (--html), fills photograph -> path -> `plots.pixel_images` (PNGs)."""
    from . import compat
    from .as_loaded import LoadError, load_as_users_do

    try:
        loaded = load_as_users_do(folder, case)
    except (LoadError, OSError, ValueError) as e:
        return Check(False, str(e), {"max_abs_diff": None, "atol": None})
    loaded.model.float()  # half-precision weights: compared in float32, as every forward check
    images = list(photographs.values())
    reference_pixels = torch.stack([source_transform(image.convert("RGB")) for image in images])
    with torch.inference_mode():
        reference = oracle(reference_pixels)
    figures, problems, top1 = {"processor_class": type(loaded.processor).__name__, "photographs": list(photographs)}, [], {}
    for path, processor in loaded.processors.items():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        if pictures is not None:
            from .plots import pixel_images

            for name, ours, theirs in zip(photographs, pixels, reference_pixels):
                pictures.setdefault(name, {})[path] = pixel_images(theirs, ours, processor.image_mean, processor.image_std) | {
                    "processor_class": type(processor).__name__}
        if pixels.shape != reference_pixels.shape:
            problems.append(f"{path} backend ({type(processor).__name__}): pixel values {tuple(pixels.shape)}, "
                            f"the original evaluation {tuple(reference_pixels.shape)}")
            continue
        exact = compat.is_pil_processor(processor)
        limit = 0.0 if exact else DEFAULT_BACKEND_GREY_LEVELS
        levels = grey_levels(pixels - reference_pixels, processor.image_std)
        if levels > limit:  # no forward pass needed to fail (they cost seconds each on a 660M model)
            figures[path] = {"processor_class": type(processor).__name__, "grey_levels": levels, "grey_levels_limit": limit}
            problems.append(f"{path} backend ({type(processor).__name__}): pixels {levels:g} grey levels from the original "
                            f"evaluation > {limit:g} (max abs diff {(pixels - reference_pixels).abs().max().item():.3g})")
            continue
        with torch.inference_mode():
            outputs = getattr(loaded.model(pixel_values=pixels), case.output)
        compared = outputs_close(case.id, f"{path} backend ({type(processor).__name__}) outputs vs the original evaluation",
                                 outputs, reference, case.atol if exact else float("inf"))
        figures[path] = {"processor_class": type(processor).__name__, "grey_levels": levels, "grey_levels_limit": limit,
                         **{k: v for k, v in compared.figures.items() if k != "atol"},
                         "atol": case.atol if exact else None, "min_cosine": None if exact else DEFAULT_BACKEND_MIN_COSINE}
        if outputs.ndim == 2:
            figures[path]["top1_agreement"] = (outputs.argmax(1) == reference.argmax(1)).double().mean().item()
            top1[path] = int(outputs[0].argmax())
        if not compared.ok:
            problems.append(compared.message)
        elif not exact and not compared.figures["cosine_similarity"] >= DEFAULT_BACKEND_MIN_COSINE:
            problems.append(f"{path} backend outputs: cosine {compared.figures['cosine_similarity']:.6f} < {DEFAULT_BACKEND_MIN_COSINE}")
    if loaded.pipeline is not None and "default" in top1:  # pipeline("image-classification", model=folder)
        top = loaded.pipeline(images[0], top_k=1)[0]["label"]
        expected = loaded.model.config.id2label[top1["default"]]  # the loaded model's own top-1 on that image
        figures["pipeline_top1"] = top
        if top != expected:
            problems.append(f"pipeline top-1 {top!r}, the loaded model's {expected!r}")
    default = figures.get("default", {})
    figures |= {"max_abs_diff": default.get("max_abs_diff"), "atol": default.get("atol"), "grey_levels": default.get("grey_levels")}
    return Check(not problems, f"{case.id}: {folder} as users load it:\n" + "\n".join(problems), figures)
