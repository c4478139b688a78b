"""Test double: a deliberately broken conversion in a real harness run, for the pages and messages
a failure produces. `pytest -p tests.support.broken_plan` with VISION_PORT_BROKEN_PLAN=<case id>
swaps two same-shape tensors of one module in the middle of that case's network (the weight and
bias of a norm, say): a bug that keeps every key and shape, so the logits check fails and records
per-block parity. The swap is a mutant as tests/test_mutations.py builds them."""

from __future__ import annotations

import itertools
import os

ENV = "VISION_PORT_BROKEN_PLAN"


def broken(case, plan):
    """`plan` with two same-shape float tensors of one module (the middle such pair) exchanged."""
    import converters
    from converters.plan import meta_state, rename_key
    from tests.test_mutations import _swap

    staged = converters.original_layout(case)
    for op in plan.ops:  # renames see the names the ops produce
        staged = op.forward(meta_state(staged))
    target_of = {k: t for k in staged if (t := rename_key(k, plan.renames)) is not None}
    pairs = [(a, b) for a, b in itertools.combinations(sorted(target_of), 2)
             if a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0] and staged[a].shape == staged[b].shape
             and staged[a].dtype.is_floating_point and staged[a].numel() > 1]
    a, b = pairs[len(pairs) // 2]
    return _swap(plan, a, b, target_of)


def pytest_configure(config):
    import converters
    import converters.core as core

    broken_case, plan_of = os.environ.get(ENV), core.plan_of
    core.plan_of = lambda case: broken(case, plan_of(case)) if case.id == broken_case else plan_of(case)
    vars(converters).pop("plan_of", None)  # the facade looks it up again, patched
