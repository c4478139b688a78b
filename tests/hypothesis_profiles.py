"""Hypothesis profiles for the property tests, chosen by the HYPOTHESIS_PROFILE environment
variable (tox.ini: `fast` for the default run, `thorough` nightly).

- fast: few examples, derandomized: every run draws the same examples, so a failure reproduces
  by running the test again.
- thorough: many examples from a fresh random seed, or from HYPOTHESIS_SEED when set.

Every failure prints the falsifying example, a `@reproduce_failure` blob and the line that
reruns it (`HYPOTHESIS_PROFILE=... HYPOTHESIS_SEED=...`).
"""

from __future__ import annotations

import functools
import os
import random

import hypothesis
from hypothesis import HealthCheck, settings

# Default examples per property and profile; a property that is much cheaper or dearer than a
# few tens of milliseconds per example sets its own with `examples(fast=..., thorough=...)`.
EXAMPLES = {"fast": 12, "thorough": 300}

_common = dict(
    deadline=None,  # shared 2-core machine: timings vary with other people's tests
    print_blob=True,
    database=None,  # reproduction comes from the seed and the printed blob, not a local cache
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.register_profile("fast", max_examples=EXAMPLES["fast"], derandomize=True, **_common)
settings.register_profile("thorough", max_examples=EXAMPLES["thorough"], derandomize=False, **_common)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fast")
if PROFILE not in EXAMPLES:
    raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: known profiles are {', '.join(EXAMPLES)}")
settings.load_profile(PROFILE)

# fast draws from the seed derived from each test's name unless HYPOTHESIS_SEED asks otherwise.
_env_seed = os.environ.get("HYPOTHESIS_SEED")
SEED = int(_env_seed) if _env_seed else (None if PROFILE == "fast" else random.randrange(2**32))
if SEED is not None and PROFILE == "fast":
    settings.register_profile("fast-seeded", parent=settings.get_profile("fast"), derandomize=False)
    settings.load_profile("fast-seeded")
RERUN = f"rerun with HYPOTHESIS_PROFILE={PROFILE}" + (f" HYPOTHESIS_SEED={SEED}" if SEED is not None else " (derandomized)")


def examples(fast: int, thorough: int) -> settings:
    """Settings with the number of examples this profile runs for one property."""
    return settings(max_examples=fast if PROFILE == "fast" else thorough)


def given(*args, **kwargs):
    """`hypothesis.given` that applies the profile's seed and notes how to rerun a failure."""

    def decorate(test):
        @functools.wraps(test)
        def noted(*a, **k):
            hypothesis.note(RERUN)
            return test(*a, **k)

        run = hypothesis.given(*args, **kwargs)(noted)
        return hypothesis.seed(SEED)(run) if SEED is not None else run

    return decorate
