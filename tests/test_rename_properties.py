"""Property tests of every family's conversion plan over generated model configurations.

A plan that is right for the published configurations can still be wrong for another depth,
width or head count. For each family a strategy generates valid configurations (the
family's published cases with depths, widths, layers, heads, image size, classifier varied as the
family allows; declared by the family); layouts are built on the meta device, so an example costs milliseconds:

(a) the plan maps the original key set onto the transformers key set exactly, shapes equal;
(b) backwards after forwards gives the original state dict bit for bit on random tensors (and
    forwards after backwards the transformers one);
(c) no two source keys land on one target key;
(d) every tensor operation (Split, Reshape, Transpose, Drop with restore) is an exact inverse
    pair, over random shapes and on each family's own plan;
(e) keys, shapes, dtypes and coverage from the meta application equal those of a real one.

The families and their strategies come from the registry (`Family.configurations`, required):
a new family is covered without an edit here.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest
import torch
from hypothesis import strategies as st

import converters
from converters import checks, compat
from converters.case import random_state
from converters.plan import Drop, Plan, Rename, Reshape, Split, Transpose
from hypothesis_profiles import examples, given
from vision_port_fixtures.plugin import family_params

# --------------------------------------------------------------------------- configurations
# Each family declares `configurations(case, tiny)`: a strategy of config overrides valid for the
# case's layout, any valid size for meta-only properties (tiny=False), a few kB to a few MB where
# real random tensors are made (tiny=True). Every override it can generate must be valid for the
# target library: a rejected configuration is a bug in the strategy, not something to filter.
# `Family.examples` sets fewer examples for families whose examples are dear.


FAMILIES = family_params()


def draw_case(data, family, tiny: bool):
    """A published case of the family with a generated configuration."""
    published = {c.id: c for c in family.cases}
    base = published[data.draw(st.sampled_from(sorted(published)), label="published case")]
    if tiny:
        base = base.for_random_weights()  # reduced widths where the real size cannot be materialised
    overrides = data.draw(family.configurations(base, tiny), label="config overrides")
    return dataclasses.replace(base, config={**base.config, **overrides})


def for_each_configuration(family, tiny: bool, prop):
    """Run `prop(case, seed)` on generated configurations of the family (hypothesis; the profile
    sets the number of examples). Skips a family the installed transformers cannot build."""
    if reason := compat.unsupported(family.cases[0]):
        pytest.skip(reason)

    @given(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def run(data, seed):
        prop(draw_case(data, family, tiny), seed)

    if tiny in family.examples:
        run = examples(*family.examples[tiny])(run)
    run()


def _shapes(state):
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def _describe(case) -> str:
    return f"{case.id} with config {dict(case.config)}"


def _changed(expected: dict, actual: dict) -> list[str]:
    """Keys whose tensors are missing, of another dtype or not bit-identical."""
    return sorted(k for k, v in expected.items() if k not in actual or actual[k].dtype != v.dtype or not torch.equal(actual[k], v))


# --------------------------------------------------------------------------- (a) key sets


def maps_key_sets_exactly(case, seed):
    plan = converters.plan_of(case)
    original, target = converters.original_layout(case), converters.target_layout(case)

    out, coverage = plan.forwards(original, target=target)
    assert coverage.ok, f"{_describe(case)}: forwards:\n{coverage.describe()}"
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in target.items()}

    back, coverage = plan.backwards(target, target=original)
    assert coverage.ok, f"{_describe(case)}: backwards:\n{coverage.describe()}"
    restorable = set(original) - set(plan.unrestorable(original))
    assert set(back) == restorable, f"{_describe(case)}: backwards gives {sorted(set(back) ^ restorable)} wrongly"
    assert all(tuple(back[k].shape) == tuple(original[k].shape) for k in restorable)


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_maps_original_key_set_onto_target_key_set(family):
    for_each_configuration(family, tiny=False, prop=maps_key_sets_exactly)


# --------------------------------------------------------------------------- (b) round trip


def round_trips_bit_for_bit(case, seed):
    plan = converters.plan_of(case)
    original_meta, target_meta = converters.original_layout(case), converters.target_layout(case)

    original = random_state(original_meta, seed)
    converted, coverage = plan.forwards(original, target=target_meta)
    assert coverage.ok, f"{_describe(case)}:\n{coverage.describe()}"
    check = checks.round_trip(case.id, plan, converted, original)  # the harness's own check
    assert check.ok, f"{_describe(case)}, seed {seed}: {check.message}"
    restorable = {k: v for k, v in original.items() if k not in set(plan.unrestorable(original))}
    back, _ = plan.backwards(converted, target=original)
    assert not _changed(restorable, back) and set(back) == set(restorable)

    # and the other way: a transformers state dict -> original -> transformers
    hf = random_state(target_meta, seed)
    back, coverage = plan.backwards(hf, target=original_meta)
    assert coverage.ok, f"{_describe(case)}: backwards:\n{coverage.describe()}"
    again, coverage = plan.forwards(back, target=target_meta)
    assert coverage.ok, f"{_describe(case)}: forwards after backwards:\n{coverage.describe()}"
    assert not (changed := _changed(hf, again)), f"{_describe(case)}, seed {seed}: forwards after backwards changed {changed}"


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_exact_on_random_tensors(family):
    for_each_configuration(family, tiny=True, prop=round_trips_bit_for_bit)


# --------------------------------------------------------------------------- (c) injective


def maps_injectively(case, seed):
    plan = converters.plan_of(case)
    original = converters.original_layout(case)

    _, coverage = plan.forwards(original)
    assert not coverage.duplicates, f"{_describe(case)}:\n{coverage.describe()}"
    sources = defaultdict(list)
    for key, targets in plan.key_map(original).items():
        for target in targets:
            sources[target].append(key)
    collisions = {t: s for t, s in sources.items() if len(s) > 1}
    assert not collisions, f"{_describe(case)}: target keys with several sources: {collisions}"
    # every original key lands somewhere, unless the plan drops it on purpose
    unmapped = sorted(set(original) - {s for src in sources.values() for s in src} - set(coverage.dropped))
    assert not unmapped, f"{_describe(case)}: original keys that map to nothing: {unmapped}"


@pytest.mark.parametrize("family", FAMILIES)
def test_no_two_source_keys_land_on_one_target(family):
    for_each_configuration(family, tiny=False, prop=maps_injectively)


# --------------------------------------------------------------------------- (d) tensor operations

NAMES = st.sampled_from(["q", "k", "v", "gate", "up", "a", "b"])


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _state(keys_and_shapes, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) for k, shape in keys_and_shapes}


def _check_inverse_pair(op, state: dict):
    forward = op.forward(state)
    assert _equal_states(op.backward(forward), state), f"{op}: backward(forward(x)) != x"
    assert _equal_states(op.forward(op.backward(forward)), forward), f"{op}: forward(backward(y)) != y"
    inverse = op.reversed()
    assert _equal_states(inverse.forward(state), op.backward(state)), f"{op}: reversed().forward != backward"
    assert inverse.reversed() == op
    return forward


BYSTANDERS = (("blocks.0.norm.weight", (3,)), ("blocks.0.attn.qkv_extra", (2, 2)), ("head.bias", (5,)))


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    data=st.data(),
    indices=st.sets(st.integers(0, 12), min_size=1, max_size=3),
    prefix=st.booleans(),
    seed=st.integers(0, 2**16),
)
@examples(fast=60, thorough=1000)
def test_split_is_an_exact_inverse_pair(shape, data, indices, prefix, seed):
    dim = data.draw(st.integers(0, len(shape) - 1), label="dim")
    names = data.draw(st.lists(NAMES, min_size=2, max_size=4, unique=True), label="chunk names")
    shape[dim] *= len(names)
    # a prefix template splits every tensor under it (weight and bias of a fused projection)
    suffixes = (".weight", ".bias") if prefix else ("",)
    source = "blocks.{i}.attn.qkv" + ("." if prefix else "")
    op = Split(source, tuple(f"blocks.{{i}}.attn.{n}" + ("." if prefix else "") for n in names), dim)
    fused = [(f"blocks.{i}.attn.qkv" + s, tuple(shape)) for i in indices for s in suffixes]
    state = _state(fused + list(BYSTANDERS), seed)

    forward = _check_inverse_pair(op, state)
    for key, _ in fused:
        chunks = [forward[key.replace(".qkv", f".{n}")] for n in names]
        assert torch.equal(torch.cat(chunks, dim), state[key])
        assert all(tuple(c.shape) == tuple(shape[:dim]) + (shape[dim] // len(names),) + tuple(shape[dim + 1:]) for c in chunks)
    assert all(torch.equal(forward[k], state[k]) for k, _ in BYSTANDERS), "Split touched a key it does not match"


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data(), seed=st.integers(0, 2**16))
@examples(fast=60, thorough=1000)
def test_reshape_is_an_exact_inverse_pair(shape, data, seed):
    numel = int(torch.tensor(shape).prod())
    # the target: flattened (-1), GRN-style leading ones, or the sizes regrouped
    kind = data.draw(st.sampled_from(["flat", "ones", "regroup"]), label="target kind")
    if kind == "flat":
        new, back = (-1,), tuple(shape[:-1]) + (-1,)
    elif kind == "ones":
        new, back = (1, 1, 1, -1), tuple(shape)
    else:
        first = data.draw(st.sampled_from([d for d in range(1, numel + 1) if numel % d == 0]), label="first dim")
        new, back = (first, -1), tuple(shape)
    op = Reshape("stages.{i}.{j}.grn.gamma", new, back)
    keys = [(f"stages.{i}.{j}.grn.gamma", tuple(shape)) for i in range(2) for j in range(2)]
    state = _state(keys + list(BYSTANDERS), seed)

    forward = _check_inverse_pair(op, state)
    for key, _ in keys:
        assert torch.equal(forward[key].flatten(), state[key].flatten())
    assert all(torch.equal(forward[k], state[k]) for k, _ in BYSTANDERS), "Reshape touched a key it does not match"


@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), data=st.data(), seed=st.integers(0, 2**16))
@examples(fast=60, thorough=1000)
def test_transpose_is_an_exact_inverse_pair(shape, data, seed):
    dims = tuple(data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=2, max_size=2, unique=True), label="dims"))
    op = Transpose("layers.{i}.proj.weight", dims)
    keys = [(f"layers.{i}.proj.weight", tuple(shape)) for i in (0, 7, 11)]
    state = _state(keys + list(BYSTANDERS), seed)

    forward = _check_inverse_pair(op, state)
    for key, _ in keys:
        assert torch.equal(forward[key], state[key].transpose(*dims))
    assert all(torch.equal(forward[k], state[k]) for k, _ in BYSTANDERS), "Transpose touched a key it does not match"


@given(indices=st.sets(st.integers(0, 30), min_size=1, max_size=4), size=st.integers(1, 6), seed=st.integers(0, 2**16))
@examples(fast=40, thorough=500)
def test_drop_with_restore_round_trips_through_a_plan(indices, size, seed):
    # an index buffer the target recomputes: dropped forwards, rebuilt backwards from its groups
    def index(groups, state):
        return torch.arange(size * size).reshape(size, size) + int(groups["i"])

    plan = Plan(renames=(Rename("blocks.{i}.", "encoder.layer.{i}."),), ops=(Drop("blocks.{i}.attn.relative_position_index", index),))
    original = _state([(f"blocks.{i}.attn.proj.weight", (size, size)) for i in indices], seed)
    original |= {f"blocks.{i}.attn.relative_position_index": index({"i": str(i)}, original) for i in indices}

    converted, coverage = plan.forwards(original)
    assert coverage.ok and not any("relative_position_index" in k for k in converted)
    assert sorted(coverage.dropped) == sorted(k for k in original if "relative_position_index" in k)
    back, coverage = plan.backwards(converted, target=original)
    assert coverage.ok, coverage.describe()
    assert _equal_states(back, original)
    assert plan.unrestorable(original) == []
    assert Plan(plan.renames, (Drop("blocks.{i}.attn.relative_position_index"),)).unrestorable(original) == sorted(
        k for k in original if "relative_position_index" in k
    )


def _plan_has_ops(family) -> str | None:
    if not any(converters.plan_of(c).ops for c in family.cases):
        return f"{family.name}: its plans have no tensor operations (renames only)"
    return None


def each_op_inverts_exactly(case, seed):
    plan = converters.plan_of(case)
    state = random_state(converters.original_layout(case), seed)
    for op in plan.ops:  # each op sees the state the ops before it produced, as in Plan.forwards
        if isinstance(op, Drop):  # restored by the plan: round_trips_bit_for_bit checks it
            state = op.forward(state)
        else:
            state = _check_inverse_pair(op, state)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_plan_operation_is_an_exact_inverse_pair_on_the_family_layout(family):
    if reason := _plan_has_ops(family):
        pytest.skip(reason)
    for_each_configuration(family, tiny=True, prop=each_op_inverts_exactly)


# --------------------------------------------------------------------------- (e) meta == real


def meta_equals_real(case, seed):
    plan = converters.plan_of(case)
    meta, target = converters.original_layout(case), converters.target_layout(case)
    real = random_state(meta, seed)

    out_meta, coverage_meta = plan.forwards(meta, target=target)
    out_real, coverage_real = plan.forwards(real, target=target)
    assert _shapes(out_meta) == _shapes(out_real), f"{_describe(case)}: forwards differ on meta and real tensors"
    assert coverage_meta.as_dict() == coverage_real.as_dict(), f"{_describe(case)}: coverage differs on meta and real tensors"

    back_meta, coverage_meta = plan.backwards(out_meta, target=meta)
    back_real, coverage_real = plan.backwards(out_real, target=real)
    assert _shapes(back_meta) == _shapes(back_real), f"{_describe(case)}: backwards differ on meta and real tensors"
    assert coverage_meta.as_dict() == coverage_real.as_dict(), f"{_describe(case)}: backwards coverage differs"


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_application_equals_real_application(family):
    for_each_configuration(family, tiny=True, prop=meta_equals_real)
