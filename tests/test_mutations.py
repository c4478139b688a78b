"""A check that never fails proves nothing: every family's plan is mutated (two same-shape targets
swapped, an operation dropped or reversed, split chunks reordered, a matrix transposed, a bias
zeroed, a key dropped) and the harness's own checks - key coverage, outputs against the family's
oracle on a small random image batch, round trip; the functions in `converters.checks` that
tests/test_conversions.py runs - must catch every mutant.

    pytest tests/test_mutations.py -s      # prints `mutants <family>: killed K of N`

Mutants are plan data: new `Plan`s built with `dataclasses.replace`, extra renames in front (first
match wins) or extra ops. A zeroed bias is the test-local `Zero` op below, which forward writes
zeros and backward cannot undo, exactly what a conversion that loses a bias does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
from dataclasses import dataclass

import pytest
import torch

import converters
from converters import checks, compat
from converters.case import Case
from converters.plan import Drop, Op, Plan, Rename, Split, Template, Transpose, meta_state, rename_key
from vision_port_fixtures.plugin import family_params

MIN_MUTANTS = 20
PICKS = {"swap": 8, "transpose_square": 3, "transpose": 2, "zero_bias": 4, "drop_key": 4}


@dataclass(frozen=True)
class Zero(Op):
    """Mutation only: matching tensors become zeros; backward cannot bring them back."""

    key: str

    def forward(self, state):
        return {k: (torch.zeros_like(v) if Template(self.key).match(k) is not None else v) for k, v in state.items()}

    def backward(self, state):
        return state


@dataclass(frozen=True)
class Mutant:
    name: str
    plan: Plan


def _with_ops(plan: Plan, *ops: Op) -> Plan:
    return dataclasses.replace(plan, ops=plan.ops + ops)


def _swap(plan: Plan, a: str, b: str, target_of: dict) -> Plan:
    # whole-key renames in front of the plan's own: the first match wins
    return dataclasses.replace(plan, renames=(Rename(a, target_of[b]), Rename(b, target_of[a])) + plan.renames)


# --------------------------------------------------------------------------- generated mutants


def generate(case: Case, plan: Plan, original: dict) -> list[Mutant]:
    rng = random.Random(case.id)  # the same mutants on every run
    staged = dict(original)
    for op in plan.ops:  # renames see the names the ops produce
        staged = op.forward(meta_state(staged))
    target_of = {k: t for k in staged if (t := rename_key(k, plan.renames)) is not None}
    # learned float tensors; integer buffers (BatchNorm's num_batches_tracked, index tables) do not
    # take part in an eval forward, so swapping or zeroing them is not a conversion error
    learned = sorted(k for k in target_of if staged[k].dtype.is_floating_point and staged[k].numel() > 1)
    mutants = []

    by_shape = {}
    for key in learned:
        by_shape.setdefault(tuple(staged[key].shape), []).append(key)
    pairs = [p for keys in by_shape.values() for p in itertools.combinations(keys, 2)]
    for a, b in rng.sample(pairs, min(PICKS["swap"], len(pairs))):
        mutants.append(Mutant(f"swap {a} <-> {b} (shape {tuple(staged[a].shape)})", _swap(plan, a, b, target_of)))

    square, oblong = [], []
    for key in learned:
        shape = staged[key].shape
        for d0, d1 in itertools.combinations(range(len(shape)), 2):
            if shape[d0] > 1 and shape[d1] > 1:
                (square if shape[d0] == shape[d1] else oblong).append((key, (d0, d1)))
    for picks, kind in ((square, "transpose_square"), (oblong, "transpose")):
        for key, dims in rng.sample(picks, min(PICKS[kind], len(picks))):
            mutants.append(Mutant(f"transpose {key} dims {dims} (shape {tuple(staged[key].shape)})", _with_ops(plan, Transpose(key, dims))))

    biases = [k for k in learned if k.endswith("bias")]
    for key in rng.sample(biases, min(PICKS["zero_bias"], len(biases))):
        mutants.append(Mutant(f"zero {key}", _with_ops(plan, Zero(key))))

    # keys the plan carries over (one it already drops on purpose, like lm_head, is no mutant)
    carried = sorted(k for k, targets in plan.key_map(original).items() if targets)
    for key in rng.sample(carried, min(PICKS["drop_key"], len(carried))):
        mutants.append(Mutant(f"drop {key}", dataclasses.replace(plan, ops=(Drop(key),) + plan.ops)))

    before = meta_state(original)
    for i, op in enumerate(plan.ops):
        after = op.forward(before)  # an op passes the tensors it does not match through as they are
        touches = after.keys() != before.keys() or any(after[k] is not before[k] for k in after)
        before = after
        if not touches:  # matches no key of this layout (e.g. a head the file may carry): no mutant
            continue
        others = plan.ops[:i] + plan.ops[i + 1:]
        mutants.append(Mutant(f"op dropped: {op}", dataclasses.replace(plan, ops=others)))
        # Transpose is its own inverse: reversing it is the same plan, not a mutant
        if not isinstance(op, Transpose):
            mutants.append(Mutant(f"op reversed: {op}", dataclasses.replace(plan, ops=plan.ops[:i] + (op.reversed(),) + plan.ops[i + 1:])))
        if isinstance(op, Split):  # q and k have one shape: chunks in the wrong order
            rolled = op.targets[1:] + op.targets[:1]
            mutants.append(Mutant(f"split chunks reordered: {op.source} -> {rolled}",
                                  dataclasses.replace(plan, ops=plan.ops[:i] + (dataclasses.replace(op, targets=rolled),) + plan.ops[i + 1:])))
    return mutants


# --------------------------------------------------------------------------- the harness's checks


def run_checks(case: Case, plan: Plan, original: dict, target: dict, pixels: torch.Tensor, reference: torch.Tensor,
               stop_at_first_failure: bool = False) -> dict:
    """The harness's checks on `plan`, cheapest first; the outputs only from a complete conversion
    (as in the harness: no model is built when key coverage fails)."""
    converted, coverage = plan.forwards(original, target=target)
    results = {"key_coverage": checks.key_coverage(case.id, coverage)}
    if stop_at_first_failure and not coverage.ok:
        return results
    results["round_trip"] = checks.round_trip(case.id, plan, converted, original)
    if coverage.ok and not (stop_at_first_failure and not results["round_trip"].ok):
        model = converters.build_model(case, converted)
        with torch.inference_mode():
            ours = getattr(model(pixel_values=pixels), case.output)
        results["logits"] = checks.outputs_close(case.id, f"{case.output} vs the oracle", ours, reference, case.atol)
    return results


def small_cases(family) -> list[tuple[Case, int]]:
    """The family's small configurations (`Family.mutants`), or its smallest published case at
    its own image size."""
    if family.mutants:
        cases = []
        for small in family.mutants:
            base = converters.get(small.case_id).for_random_weights()
            cases.append((dataclasses.replace(base, config={**base.config, **small.overrides}), small.image_size))
        return cases
    size = lambda c: sum(t.numel() for t in converters.original_layout(c.for_random_weights()).values())  # noqa: E731
    smallest = min(family.cases, key=size).for_random_weights()
    return [(smallest, smallest.image_size)]


@contextlib.contextmanager
def one_thread():
    """Thread hand-offs cost more than they bring on the shared 2-core machine: 0.68 s per small
    ConvNeXt-V2 mutant with 2 threads, 0.04 s with 1; ViT-hybrid's 27 published-size mutants
    157 s with 2, 88 s with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


FAMILIES = family_params()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_mutant_of_the_plan_is_caught(family):
    cases = small_cases(family)
    if reason := compat.unsupported(cases[0][0]):
        pytest.skip(reason)
    small = bool(family.mutants)
    with one_thread():
        outcomes = [outcome for case, side in cases for outcome in mutation_outcomes(case, side, small)]
    survivors = [f"{name}: {detail}" for name, killed, detail in outcomes if not killed]
    print(f"\nmutants {family.name}: killed {len(outcomes) - len(survivors)} of {len(outcomes)}")
    assert len(outcomes) >= MIN_MUTANTS, f"{family.name}: only {len(outcomes)} mutants generated, want >= {MIN_MUTANTS}"
    assert not survivors, f"{family.name}: {len(survivors)} of {len(outcomes)} mutants pass every check:\n" + "\n".join(survivors)


def mutation_outcomes(case: Case, side: int, small: bool = True, extra: list[Mutant] = ()) -> list[tuple[str, bool, str]]:
    """(mutant name, killed, what caught it or the figures it passed with) for every mutant."""
    plan = converters.plan_of(case)
    original = converters.synthetic_original(case)
    target = converters.target_layout(case)
    batch = 2 if small else 1  # a published-size forward (no small configuration) costs seconds
    pixels = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = converters.oracle(case, original)(pixels)

    baseline = run_checks(case, plan, original, target, pixels, reference)
    assert set(baseline) == {"key_coverage", "round_trip", "logits"} and all(r.ok for r in baseline.values()), (
        f"{case.id}: the unmutated plan must pass every check first: " + "; ".join(r.message for r in baseline.values() if not r.ok))

    outcomes = []
    for mutant in [*extra, *generate(case, plan, original)]:
        # one failing check kills a mutant; a forward at published size costs seconds, so a family
        # without a small configuration stops at the first failing check
        results = run_checks(case, mutant.plan, original, target, pixels, reference, stop_at_first_failure=not small)
        failed = [name for name, r in results.items() if not r.ok]
        figures = results["logits"].figures if "logits" in results else {}
        detail = (f"caught by {', '.join(failed)}" if failed else
                  f"{case.output} max abs diff {figures.get('max_abs_diff', float('nan')):.3g} <= atol {case.atol:.1g}")
        outcomes.append((f"{case.id}: {mutant.name}", bool(failed), detail))
    return outcomes
