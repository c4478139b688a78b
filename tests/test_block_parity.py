"""Per-block parity (teacher forcing, `converters.localise.block_parity`) for every family of the
registry, on its small configuration (`Family.mutants`, as the mutation tests use): the real plan
has no block over tolerance; two same-shape tensors of one block swapped (a conversion bug that
keeps every key and shape) put that block, and only that block, over tolerance, because each block
runs on the oracle's input to it and the fault does not flow downstream. The logits check prints
this when it fails, and records it for every streamed case.

Blocks of two implementations often hold their activations in different layouts (a (B, H, W, C)
map against a (B, H*W, C) token sequence): the core derives the common alignments, a family
declares any other (`Family.block_alignment`), and a block nothing aligns is unpaired, with both
shapes; toy models below check each without naming a family."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import converters
from converters import compat
from converters.localise import block_parity
from tests.test_mutations import one_thread, small_cases
from vision_port_fixtures.plugin import family_params


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
        clean = block_parity(converters.build_model(case, state), oracle, {"pixel_values": pixels}, (pixels,), case.atol,
                             family=family)
        assert len(clean.blocks) >= 2 and not clean.unpaired, f"{case.id}: {clean.describe()}"
        assert clean.first_over is None, f"{case.id}: the real plan: {clean.describe()}"

        middle = clean.blocks[len(clean.blocks) // 2].block
        broken, swapped = _swapped_in(middle, state)
        faulty = block_parity(converters.build_model(case, broken), oracle, {"pixel_values": pixels}, (pixels,), case.atol,
                              family=family)
    over = [b.block for b in faulty.blocks if b.over]
    assert over == [middle], f"{case.id}: {swapped[0]} <-> {swapped[1]} swapped: blocks over tolerance {over}, want [{middle}]"
    assert faulty.worst.block == middle and middle in faulty.describe(), faulty.describe()


# --------------------------------------------------------------------------- layouts, on toy models

C, SIDE = 8, 4  # channels, map side: (1, 4, 4, 8) maps, (1, 16, 8) sequences
# layout -> (from an image (B, C, H, W), to channels-last (..., C), back from channels-last)
LAYOUTS = {
    "bhwc": (lambda x: x.permute(0, 2, 3, 1), lambda x: x, lambda x: x),
    "bnc": (lambda x: x.flatten(2).transpose(1, 2), lambda x: x, lambda x: x),
    "bchw": (lambda x: x, lambda x: x.permute(0, 2, 3, 1), lambda x: x.permute(0, 3, 1, 2)),
    "bcn": (lambda x: x.flatten(2), lambda x: x.transpose(1, 2), lambda x: x.transpose(1, 2)),  # no derived rule
}


class ToyBlock(nn.Module):
    def __init__(self, layout: str):
        super().__init__()
        self.layout, self.a, self.b, self.c = layout, nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)

    def forward(self, x):
        _, last, back = LAYOUTS[self.layout]
        y = last(x)
        return back(y + self.c(torch.tanh(self.b(torch.tanh(self.a(y))))))


class Toy(nn.Module):
    """Three residual MLP blocks on activations held in `layout`."""

    def __init__(self, layout: str):
        super().__init__()
        self.layout, self.blocks = layout, nn.Sequential(*(ToyBlock(layout) for _ in range(3)))

    def forward(self, pixel_values):
        into, last, _ = LAYOUTS[self.layout]
        return last(self.blocks(into(pixel_values))).flatten(1, -2).mean(1)


def toy_pair(oracle_layout: str, converted_layout: str):
    oracle, converted = Toy(oracle_layout), Toy(converted_layout)
    converted.load_state_dict(oracle.state_dict())
    pixels = torch.randn(1, C, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    return converted, oracle, pixels


def parity(converted, oracle, pixels, family=None):
    return block_parity(converted, oracle, {"pixel_values": pixels}, (pixels,), 1e-6, family=family)


@pytest.mark.parametrize("oracle_layout, converted_layout", [("bhwc", "bnc"), ("bnc", "bhwc"), ("bchw", "bnc"), ("bnc", "bchw")])
def test_map_and_sequence_blocks_pair_by_the_derived_alignments(oracle_layout, converted_layout):
    converted, oracle, pixels = toy_pair(oracle_layout, converted_layout)
    clean = parity(converted, oracle, pixels)
    assert len(clean.blocks) == 3 and not clean.unpaired and clean.first_over is None, clean.describe()
    with torch.no_grad():
        converted.blocks[1].b.weight.mul_(-1)  # a fault in the middle block: only it goes over
    faulty = parity(converted, oracle, pixels)
    assert [b.block for b in faulty.blocks if b.over] == ["blocks.1"], faulty.describe()


def test_blocks_no_rule_aligns_are_unpaired_naming_the_family_the_member_and_both_shapes():
    converted, oracle, pixels = toy_pair("bhwc", "bcn")  # (1, 4, 4, 8) against (1, 8, 16)
    result = parity(converted, oracle, pixels, family=SimpleNamespace(name="toy", block_alignment=None))
    message = result.describe()
    assert not result.blocks and len(result.unpaired) == 3, message
    assert message.startswith("per-block parity of family 'toy': no block paired with the oracle; 3 unpaired: "), message
    assert "blocks.0 (oracle blocks.0): input (1, 8, 16), the oracle's input (1, 4, 4, 8): no rule aligns them" in message
    assert "declare Family.block_alignment" in message


def test_a_declared_alignment_pairs_what_the_core_cannot_derive():
    converted, oracle, pixels = toy_pair("bhwc", "bcn")

    def channels_first_sequence(theirs, mine):  # (B, H, W, C) -> (B, C, H*W)
        return theirs.flatten(1, 2).transpose(1, 2) if theirs.ndim == 4 else None

    toy = SimpleNamespace(name="toy", block_alignment=channels_first_sequence)
    clean = parity(converted, oracle, pixels, family=toy)
    assert len(clean.blocks) == 3 and not clean.unpaired and clean.first_over is None, clean.describe()
    with torch.no_grad():
        converted.blocks[2].a.bias.add_(1.0)
    assert [b.block for b in parity(converted, oracle, pixels, family=toy).blocks if b.over] == ["blocks.2"]
