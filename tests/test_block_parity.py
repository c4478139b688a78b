"""Per-block parity (teacher forcing, `converters.localise.block_parity`) for every family of the
registry, on its small configuration (`Family.mutants`, as the mutation tests use): the real plan
has no block over tolerance; two same-shape tensors of one block swapped (a conversion bug that
keeps every key and shape) put that block, and only that block, over tolerance, because each block
runs on the oracle's input to it and the fault does not flow downstream. The logits check prints
this when it fails, and records it for every streamed case."""

from __future__ import annotations

import itertools

import pytest
import torch

import converters
from converters import compat
from converters.localise import block_parity
from fixtures.plugin import family_params
from tests.test_mutations import one_thread, small_cases


def _swapped_in(block: str, state: dict) -> tuple[dict, tuple[str, str]]:
    """`state` with two same-shape, unequal float tensors of `block` exchanged."""
    keys = [k for k in state if k.startswith(block + ".") and state[k].is_floating_point() and state[k].numel() > 1]
    a, b = next((a, b) for a, b in itertools.combinations(keys, 2)
                if state[a].shape == state[b].shape and not torch.equal(state[a], state[b]))
    return dict(state, **{a: state[b], b: state[a]}), (a, b)


@pytest.mark.parametrize("family", family_params())
def test_a_fault_shows_at_the_block_that_has_it(family):
    case, side = small_cases(family)[0]
    if reason := compat.unsupported(case):
        pytest.skip(reason)
    original = converters.synthetic_original(case)
    pixels = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    state, _ = converters.convert(case, original)
    oracle = converters.oracle(case, original)
    with one_thread():
        clean = block_parity(converters.build_model(case, state), oracle, {"pixel_values": pixels}, (pixels,), case.atol)
        assert len(clean.blocks) >= 2 and not clean.unpaired, f"{case.id}: {clean.describe()}; unpaired {clean.unpaired}"
        assert clean.first_over is None, f"{case.id}: the real plan: {clean.describe()}"

        middle = clean.blocks[len(clean.blocks) // 2].block
        broken, swapped = _swapped_in(middle, state)
        faulty = block_parity(converters.build_model(case, broken), oracle, {"pixel_values": pixels}, (pixels,), case.atol)
    over = [b.block for b in faulty.blocks if b.over]
    assert over == [middle], f"{case.id}: {swapped[0]} <-> {swapped[1]} swapped: blocks over tolerance {over}, want [{middle}]"
    assert faulty.worst.block == middle and middle in faulty.describe(), faulty.describe()
