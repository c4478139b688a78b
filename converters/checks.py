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
from .plan import Coverage, Plan


@dataclass
class Check:
    ok: bool
    message: str
    figures: dict = field(default_factory=dict)


def key_coverage(case_id: str, coverage: Coverage) -> Check:
    problems = coverage.problems()
    message = f"{case_id}: key coverage failed, {len(problems)} problems:\n" + "\n".join(problems)
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
            changed.append(f"tensor changed: {key} ({back[key].dtype} {tuple(back[key].shape)} vs {value.dtype} "
                           f"{tuple(value.shape)}, max abs diff {diff:.3g})")
    problems = coverage.problems() + changed
    message = (f"{case_id}: round trip is not exact, max abs diff {worst:.3g} > tolerance 0, "
               f"{len(problems)} problems:\n" + "\n".join(problems))
    figures = {"max_abs_diff": worst, "atol": 0.0, "not_restorable": sorted(skipped)}
    return Check(not problems, message, figures)

