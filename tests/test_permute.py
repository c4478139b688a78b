"""The Permute plan operation (all dimensions reordered; JAX HWIO kernels -> torch OIHW). Generic:
the keys are made up here; no family is involved."""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

from converters.plan import Permute, Plan, Rename
from hypothesis_profiles import examples, given

BYSTANDERS = {"head/bias": torch.arange(5.0), "block1/unit01/a/group_norm/gamma": torch.arange(3.0)}


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=5), data=st.data(), seed=st.integers(0, 2**16))
@examples(fast=60, thorough=1000)
def test_permute_is_an_exact_inverse_pair(shape, data, seed):
    dims = tuple(data.draw(st.permutations(range(len(shape))), label="dims"))
    generator = torch.Generator().manual_seed(seed)
    kernels = {f"block{i}/unit01/a/standardized_conv2d/kernel": torch.randn(shape, generator=generator) for i in (1, 4)}
    state = kernels | BYSTANDERS
    op = Permute("block{i}/unit{j}/a/standardized_conv2d/kernel", dims)

    forward = op.forward(state)
    for key, kernel in kernels.items():
        assert torch.equal(forward[key], kernel.permute(dims)) and forward[key].is_contiguous()
    assert all(forward[k] is v for k, v in BYSTANDERS.items()), "Permute touched a key it does not match"
    back = op.backward(forward)
    assert all(torch.equal(back[k], state[k]) for k in state), f"{op}: backward(forward(x)) != x"
    inverse = op.reversed()
    assert all(torch.equal(inverse.forward(forward)[k], state[k]) for k in state) and inverse.reversed() == op


def test_hwio_kernel_becomes_oihw_and_round_trips_through_a_plan():
    hwio = torch.arange(3 * 3 * 2 * 4, dtype=torch.float32).reshape(3, 3, 2, 4)  # (H, W, I, O)
    plan = Plan(renames=(Rename("conv/kernel", "conv.weight"),), ops=(Permute("conv/kernel", (3, 2, 0, 1)),))
    converted, _ = plan.forwards({"conv/kernel": hwio})
    oihw = converted["conv.weight"]
    assert oihw.shape == (4, 2, 3, 3)
    assert oihw[3, 1, 2, 0] == hwio[2, 0, 1, 3]  # element (o, i, h, w) is the kernel's (h, w, i, o)
    back, _ = plan.backwards(converted)
    assert torch.equal(back["conv/kernel"], hwio)


def test_a_wrong_inverse_would_not_round_trip():
    """The inverse of (3, 2, 0, 1) is (2, 3, 1, 0), not the same permutation again: a backward that
    reapplied `dims` gives another tensor (the check above can fail)."""
    op = Permute("k", (3, 2, 0, 1))
    assert op.inverse == (2, 3, 1, 0)
    x = torch.randn(2, 3, 4, 5)
    assert not torch.equal(x.permute(op.dims).permute(op.dims).reshape(-1)[:20], x.reshape(-1)[:20])
    assert torch.equal(op.backward(op.forward({"k": x}))["k"], x)


@pytest.mark.parametrize("dims", [(0, 0, 1), (1, 2), (0, 1, 3)])
def test_dims_that_are_not_a_permutation_are_refused(dims):
    with pytest.raises(ValueError, match=r"Permute 'k': dims .* are not a permutation"):
        Permute("k", dims)


def test_a_matching_tensor_of_another_rank_passes_and_coverage_reports_its_shape():
    """A bad checkpoint (a 2-D kernel where a 4-D one belongs) does not raise: the plan reports it."""
    plan = Plan(renames=(Rename("conv/kernel", "conv.weight"),), ops=(Permute("conv/kernel", (3, 2, 0, 1)),))
    flat = torch.randn(6, 4)
    converted, coverage = plan.forwards({"conv/kernel": flat}, target={"conv.weight": torch.empty(4, 2, 3, 1, device="meta")})
    assert converted["conv.weight"] is flat
    assert coverage.shape_mismatches == [("conv.weight", (6, 4), (4, 2, 3, 1))]
