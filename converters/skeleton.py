"""Write a runnable skeleton of a new family: its module and its test module.

    python -m converters.skeleton NAME [--out DIR]

writes DIR/converters/families/NAME.py and DIR/tests/test_NAME.py (DIR: the repository root, by
default the current directory). Every member a family must declare is there, stubbed and explained:
the module imports and the registry lists it, but every stub raises `FillThisIn` naming the member
and what to write, so each generic check of its case fails loudly until it is written; none passes
on a stub. README.md "Adding a family" lists the checks that then pick the family up.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from pathlib import Path


class FillThisIn(NotImplementedError):
    """A member of a family written by the skeleton and not yet filled in."""


def fill_this_in(member: str, what: str):
    """A stub for `member`: calling it raises FillThisIn saying what to write."""

    def stub(*args, **kwargs):
        raise FillThisIn(f"fill this in: {member}: {what}")

    stub.__name__ = member.rsplit(".", 1)[-1]
    return stub


MODULE = '''"""{name}: <the original repository> -> <the transformers model class>.       (fill this in)

Written by `python -m converters.skeleton {name}`. Describe the original file layout here (its
wrapper entries, key names and shapes) and how it maps onto transformers' names: the next reader
checks the plan against this text. Every `fill_this_in(...)` below raises until it is written.
"""

from __future__ import annotations

import torch  # noqa: F401  (layouts are meta tensors)

# absolute imports: the module works in converters/families/ and in a package of one's own
from converters.case import IMAGENET_MEAN, IMAGENET_STD, Case
from converters.evaluation import Evaluation  # noqa: F401
from converters.family import Family, Provenance, Small  # noqa: F401
from converters.plan import Drop, Line, Plan, Rename, Split  # noqa: F401  (the pieces a plan is made of)
from converters.skeleton import fill_this_in

# One Case per published checkpoint (converters/case.py documents every field). The values below
# are a placeholder ViT-base/16 so that the module imports: replace every one of them.
CASES = (
    Case(
        id="{name}_base",  # what `pytest -k` matches
        family="{name}",
        hub_name="{hub}-base",  # the repo name the converted model is saved / pushed under
        url=None,  # the original checkpoint's URL (the original repository's README)
        config_class="ViTConfig",  # the transformers config class, and its arguments for this checkpoint:
        config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16,
                    num_labels=1000),
        model_class="ViTForImageClassification",
        output="logits",  # or "last_hidden_state" for a backbone
        # the transformers image processor (its PIL implementation) reproducing `evaluation` below;
        # converters/pixels.py must model it (tests/test_pixel_properties.py skips what it cannot)
        processor_class="ViTImageProcessor",
        processor=dict(do_resize=True, size={{"height": 224, "width": 224}}, resample=3, do_normalize=True,
                       image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True),
        atol=1e-5,  # logits vs the oracle on random weights: set it from what you measure
        published_repo=None,  # "org/name" where transformers already publishes this conversion, if it does
    ),
)

# The original evaluation preprocessing, read from the original repository's evaluation code (not
# from timm unless the original is timm: then `evaluation=converters.evaluation.timm_evaluation`).
# The registry calls it when it loads the family: until it is written, collection stops here.
evaluation = fill_this_in(
    "evaluation", "return converters.evaluation.Evaluation(source='<owner/repo> <file> <function>', crop_size=..., "
    "shortest_edge=... | crop_pct=... | warp=True, interpolation='bicubic', mean=..., std=...) for the case")

# Case -> Plan: renames (original key templates -> transformers', `{{i}}` for indices; a template
# ending in '.' is a prefix) and reversible ops (Split a fused qkv, Drop a buffer transformers
# recomputes, with `restore` to rebuild it). Names that differ between transformers lines go in
# `by_line={{5: Line(...), 4: Line(...)}}`. converters/vit_blocks.py has the ViT-style pieces.
# Start from a draft derived from the two models (run it on each transformers line):
#   python -m converters.draft --layout ORIGINAL.pth --oracle timm:MODEL --target TransformersClass --out draft.py
plan = fill_this_in("plan", "return Plan(renames=(...), ops=(...), by_line={{...}}) for the case "
                            "(a draft: python -m converters.draft --layout ... --oracle timm:... --target ...)")

# Case -> {{original key: meta tensor}}: the original checkpoint's keys and shapes, in its order,
# built from the case's config (real tensors only for buffers the original computes).
original_layout = fill_this_in("original_layout", "return {{key: torch.empty(shape, device='meta')}} of the original "
                               "state dict for the case's config")

# (Case, original state dict) -> pixels -> output: an implementation we did not write (timm through
# its own checkpoint filter, or the original code), loaded with the original tensors.
oracle = fill_this_in("oracle", "return a callable pixels -> the case's output, e.g. converters.reference.timm_model(...)")

# (Case, tiny) -> a hypothesis strategy of config overrides valid for the case's layout (depths,
# widths, heads, image size, classes); tiny=True where real tensors are made: keep them small.
configurations = fill_this_in("configurations", "return a hypothesis strategy of config overrides (import hypothesis inside)")

# The module's name is the family's; plan, original_layout, oracle, configurations and evaluation
# are the functions above, taken by their names (converters/family.py documents every member).
FAMILY = Family.declared_in(
    globals(),
    cases=CASES,
    unwrap=(),  # entries of the checkpoint file holding the weights, e.g. ("model",)
    # a small configuration for the mutation and per-block parity tests (a forward in milliseconds)
    mutants=(Small("{name}_base", {{"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2}}),),
    # licence, papers, repository, training data, as the original repository states them;
    # None: the family converts and saves but is never pushed
    provenance=None,
)
'''

TESTS = '''"""{name}: what the generic tests cannot know: the original layout against the original code.

Written by `python -m converters.skeleton {name}`: each test fails with "fill this in" until written.
The generic tests (README.md "Adding a family") pick the family up without an edit.
"""

from __future__ import annotations

import pytest

import converters

pytestmark = pytest.mark.{name}  # the nightly workflow selects families by mark


def test_original_layout_is_the_original_models():
    """The declared layout equals the original model's state dict, key for key: count its keys
    (and a few shapes) from the original code or a real file, and write the figures here."""
    expected_keys = None  # fill this in: {{case id: number of keys in the original state dict}}
    assert expected_keys is not None, "fill this in: the original state dicts' key counts, from the original code"
    counts = {{c.id: len(converters.original_layout(c)) for c in converters.cases("{name}")}}
    assert counts == expected_keys
'''


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise SystemExit(f"skeleton: {name!r} is not a family name (a lower-case Python identifier: letters, digits, _)")


def write(name: str, out: Path) -> list[Path]:
    """Write the two files under `out`; refuse to overwrite either (nothing is written then)."""
    _check_name(name)
    files = {out / "converters" / "families" / f"{name}.py": MODULE, out / "tests" / f"test_{name}.py": TESTS}
    existing = [str(p) for p in files if p.exists()]
    if existing:
        raise SystemExit(f"skeleton: {', '.join(existing)} already exist; nothing written")
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, hub=name.replace("_", "-")))
    return list(files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.skeleton", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the family's name: its module's, its cases' prefix and its pytest mark")
    parser.add_argument("--out", type=Path, default=Path("."), help="the repository root (default: .)")
    args = parser.parse_args(argv)
    for path in write(args.name, args.out):
        print(f"wrote {path}")
    print(f"next: fill in every fill_this_in(...) and run  pytest -k {args.name}  (README.md 'Adding a family')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
