"""Draft a family's plan from the two models: `python -m converters.draft`.

    python -m converters.draft --layout ORIGINAL_FILE --oracle timm:MODEL_NAME --target TransformersClass \\
        [--config KEY=VALUE ...] [--oracle-arg KEY=VALUE ...] [--out FAMILY.py]
    python -m converters.draft --case CASE --compare
    python -m converters.draft --all --compare

Nothing is guessed from names. Every element of the original gets its own value
(`converters.landing`); the oracle loads that original its own way (timm: `create_model` + the
model module's `checkpoint_filter_fn`; a registered family: its `oracle`), which shows where each
element lands in the oracle's tensors; the oracle's tensors pair with the transformers model's by
the order their forwards first use them, and by shape (`converters.pairing`); each transformers
tensor is then read back to original keys and indices, classified (copy, reshape, transpose,
chunk of a split, concatenation), and the explicit map is compressed into templated rules
(`converters.induce`). The output is a module whose plan is data. One exception, always labelled:
an original tensor the oracle drops and a target tensor nothing fills pair by their last key
segment when both are the only ones of that name and shape (a mask token the oracle does not use).

A draft is a starting point that the harness then proves. `--compare` checks it against a
registered family's own plan on that family's layout: the same explicit map, the same operations,
and the same state dicts forwards and backwards.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .induce import InduceError, induce
from .landing import Codes, LandingError, Source, distinct, land
from .pairing import Pair, PairingError, align, ambiguous, by_local_names, pair_unused, use_order
from .plan import Drop, Plan, Reshape, Split, Transpose, _Inverse, meta_state
from .quote import listing, quote

SHOWN = 10  # differences listed per family


class UnreadableOracle(PairingError):
    """The oracle's own loader gives its tensors another dtype than the codes' (timm's `.npz`
    loaders copy into float32 parameters): no element can be read back, so nothing pairs. A
    declared refusal naming the entries, like an unpairable model."""


class DraftError(RuntimeError):
    pass


@dataclass
class Draft:
    plan: Plan
    sources: dict[str, Source]  # target key -> its original elements (the explicit map)
    drops: list[str]  # original keys that land nowhere
    by_name: dict[str, str] = field(default_factory=dict)  # target key -> original key, paired by name
    notes: list[str] = field(default_factory=list)  # decisions taken from names or outputs, for the reader
    verified: tuple[float, float] | None = None  # (max abs diff of the outputs against the oracle, tolerance)
    problems: list[str] = field(default_factory=list)  # named, not fatal: review them
    seconds: float = 0.0


def module_of(oracle) -> nn.Module:
    """The nn.Module behind an oracle: the module itself, a forward's `.model`, or a bound method's owner."""
    if isinstance(oracle, nn.Module):
        return oracle
    if isinstance(getattr(oracle, "model", None), nn.Module):
        return oracle.model
    if isinstance(getattr(oracle, "__self__", None), nn.Module):
        return oracle.__self__
    raise DraftError(f"the oracle {type(oracle).__name__} holds no nn.Module (an nn.Module, a forward with .model, or a bound method)")


def _compose(oracle_state: Mapping[str, torch.Tensor], pairs: list[Pair], target: Mapping[str, torch.Tensor]) -> dict:
    """The target state the pairs make of the oracle's tensors."""
    out = {}
    for pair in pairs:
        if pair.kind == "split":
            chunks = oracle_state[pair.sources[0]].chunk(len(pair.targets), pair.dim)
            out.update(zip(pair.targets, chunks))
            continue
        if pair.kind == "concat":
            value = torch.cat([oracle_state[s] for s in pair.sources], pair.dim)
        else:
            value = oracle_state[pair.sources[0]]
            if pair.kind == "transpose":
                value = value.t()
            elif pair.kind == "reshape":
                value = value.reshape(target[pair.targets[0]].shape)
        out[pair.targets[0]] = value
    return out


def _pixels(model: nn.Module) -> torch.Tensor:
    size = getattr(getattr(model, "config", None), "image_size", 224)
    size = size if isinstance(size, (list, tuple)) else (size, size)
    channels = getattr(getattr(model, "config", None), "num_channels", 3)
    return torch.empty(1, channels, *size, device="meta")


Check = Callable[[Plan], tuple[float, float]]  # plan -> (max abs diff of the outputs, tolerance)


def draft(layout: Mapping[str, torch.Tensor], load_oracle: Callable[[dict], object], target: nn.Module,
          check: Check | None = None) -> Draft:
    """Draft the plan from `layout` (the original's keys and shapes) to `target` (a transformers
    model, on the meta device). `load_oracle(state)` loads a state dict in the original layout
    into the oracle the oracle's own way and returns it (module, forward or bound method).
    `check(plan)` runs the oracle and the converted model on one input: where the order of first
    use, the order of definition, or first use with a fused tensor's pieces in definition order
    pair the models differently (parallel branches: a shortcut run before or after its residual
    branch; a forward that runs key before query), the outputs decide, and the draft says so;
    with no check, or when several or none reproduce the oracle, the pairings are reported."""
    start = time.perf_counter()
    coded, codes = distinct(layout)
    module = module_of(load_oracle(coded))
    oracle_state = module.state_dict()
    changed = sorted(f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in oracle_state.items()
                     if v.dtype not in (torch.float64, torch.int64))
    if changed:
        raise UnreadableOracle(f"the oracle's loading changed the dtype of {len(changed)} entries: "
                               f"{listing(changed, count=False)}: its elements cannot be read back")
    oracle_state = dict(oracle_state)
    module.to(device="meta", dtype=torch.float32)  # shapes only from here
    pixels = _pixels(target)
    src_used, src_unused = use_order(module, lambda m: m(pixels))
    tgt_used, tgt_unused = use_order(target, lambda m: m(pixels))
    target_state = target.state_dict()
    shapes = ({k: tuple(v.shape) for k, v in oracle_state.items()}, {k: tuple(v.shape) for k, v in target_state.items()})
    orders = {"the order of first use": (src_used, tgt_used),
              "the order of definition": (_defined(src_used, oracle_state), _defined(tgt_used, target_state))}
    candidates, failed, seen = [], [], []
    src_index, tgt_index = {k: n for n, k in enumerate(oracle_state)}, {k: n for n, k in enumerate(target_state)}

    def fused_by_definition(pairs):  # a fused tensor's pieces in the order their model defines them
        return [Pair(p.kind, tuple(sorted(p.sources, key=src_index.get)), tuple(sorted(p.targets, key=tgt_index.get)), p.dim)
                for p in pairs]

    orders["the order of first use, fused pieces in the order of definition"] = orders["the order of first use"]
    for label, (src, tgt) in orders.items():
        try:
            pairs = align(src, tgt)
            if label.endswith("fused pieces in the order of definition"):
                pairs = fused_by_definition(pairs)
            pairs, notes = by_local_names(pairs, *shapes)
            if set(pairs) in seen:  # the same pairing: nothing to decide
                continue
            seen.append(set(pairs))
            new, src_left, tgt_left = pair_unused(pairs, list(oracle_state), list(target_state), src_unused, tgt_unused)
            result = _result(pairs + new, notes, src_left, tgt_left, oracle_state, target_state, codes, layout)
        except PairingError as e:
            failed.append((label, e))
            continue
        if not any(result.sources == other.sources for _, other in candidates):
            candidates.append((label, result))
    if not candidates:
        raise failed[0][1]
    if len(candidates) == 1:
        label, result = candidates[0]
        if check is not None:
            _checked(result, check, coded, codes)
        else:
            _rules(result, coded, codes)
        for other, error in failed:
            first = str(error).splitlines()[0]
            result.notes.append(f"paired by {label}; {other} does not pair the models ({first})")
    else:
        result = _decide(candidates, check, coded, codes)
    result.seconds = time.perf_counter() - start
    return result


def _defined(used, state) -> list:
    """The used entries in the order their model defines them (its state dict)."""
    by_name = {e.name: e for e in used}
    return [by_name[k] for k in state if k in by_name]


def _result(pairs, notes, src_left, tgt_left, oracle_state, target_state, codes: Codes, layout) -> Draft:
    unclear = ambiguous(src_left, tgt_left)
    if unclear:
        raise PairingError("\n".join(unclear))
    landing = land(codes, _compose(oracle_state, pairs, target_state))
    unwritable = {k: why for k, why in landing.unexplained.items() if why.startswith("an arrangement of")}
    if unwritable:  # no rule reproduces them, so no output can decide between pairings: say what, not "ambiguous"
        raise PairingError(
            f"{len(unwritable)} target entries are arrangements of one original tensor that the draft writes as no "
            f"single copy, reshape, transpose or chunk (a permutation of more than two dimensions, a reshape then a "
            f"transpose): " + "; ".join(f"{quote(k)} {tuple(target_state[k].shape)}: {why}"
                                        for k, why in list(unwritable.items())[:SHOWN]))
    if landing.twice:  # a plan moves each element once: no rule can copy one
        raise DraftError("original elements land more than once: " + "; ".join(
            f"{quote(k)} ({n} element(s))" for k, n in list(landing.twice.items())[:SHOWN]))
    result = Draft(plan=Plan(renames=()), sources=dict(landing.sources), drops=[], notes=list(notes))
    result.problems += [f"target {quote(k)}: {why}" for k, why in landing.unexplained.items()]
    nowhere = {k for k, n in landing.nowhere.items() if n == int(torch.Size(codes.shape_of(k)).numel())}
    result.problems += [f"original {quote(k)}: {n} of its elements land nowhere" for k, n in landing.nowhere.items() if k not in nowhere]
    _pair_by_name(result, [e.name for e in tgt_left], nowhere, codes, target_state)
    for entry in src_left:
        result.problems.append(f"oracle tensor {quote(entry.name)} {entry.shape} pairs with no target tensor")
    result.drops = sorted(nowhere - set(result.by_name.values()), key=codes.keys.index)
    for key in result.drops:
        kind = "an index the original computes? give Drop a restore" if layout[key].dtype in (torch.int64, torch.int32) else \
            "neither the oracle nor the target holds it"
        result.problems.append(f"original {quote(key)} {codes.shape_of(key)} lands nowhere ({kind}): drafted as Drop")
    return result


def _rules(result: Draft, coded, codes: Codes) -> Plan:
    """The result's explicit map as templated rules, checked against the map."""
    try:
        plan = induce(result.sources, dict(zip(codes.keys, codes.shapes)), result.drops)
    except InduceError as e:
        raise DraftError(f"cannot write the map as rules: {e}") from None
    drafted = land(codes, plan.forwards(coded)[0])
    if drafted.sources != result.sources:
        wrong = sorted(k for k in set(drafted.sources) | set(result.sources) if drafted.sources.get(k) != result.sources.get(k))
        raise DraftError(f"the drafted rules do not reproduce the map: {listing(wrong)}")
    result.plan = plan
    return plan


def _checked(result: Draft, check: Check, coded, codes: Codes) -> bool:
    diff, tolerance = check(_rules(result, coded, codes))
    result.verified = (diff, tolerance)
    if not diff <= tolerance:
        result.problems.append(f"the converted model's output differs from the oracle's: max abs diff {diff:.3g} > {tolerance:.3g}")
    return diff <= tolerance


def _decide(candidates, check: Check | None, coded, codes: Codes) -> Draft:
    """Several pairings: the one whose converted model reproduces the oracle's output, if only one
    does; else an ambiguity naming the tensors the first two pair differently."""
    (label_a, a), (label_b, b) = candidates[:2]
    differ = [k for k in a.sources if a.sources[k] != b.sources.get(k)]
    both = "; ".join(f"{quote(k)} <- {a.sources[k].text() if k in a.sources else 'nothing'} by {label_a}, "
                     f"{b.sources[k].text() if k in b.sources else 'nothing'} by {label_b}" for k in differ[:4])
    if check is not None:
        passed = [(label, r) for label, r in candidates if _checked(r, check, coded, codes)]
        if len(passed) == 1:
            label, chosen = passed[0]
            others = " and by ".join(other for other, _ in candidates if other != label)
            chosen.notes.append(f"{len(differ)} tensors pair differently by {label_a} and by {label_b}; "
                                f"{label} reproduces the oracle's output, the pairing by {others} does not (e.g. {both})")
            chosen.problems = [p for p in chosen.problems if "output differs" not in p]
            return chosen
    raise PairingError(f"ambiguous pairing: {len(differ)} tensors pair differently by {label_a} and by {label_b}"
                       f"{'' if check is None else ' and the outputs do not decide'}: {both}")


def _pair_by_name(result: Draft, unfilled: list[str], nowhere: set[str], codes: Codes, target_state) -> None:
    """A target tensor nothing fills takes the original key the oracle dropped with the same last
    segment and shape, when each is the only one of that name and shape (labelled in the draft)."""
    def leaf(key):
        return key.rsplit(".", 1)[-1]

    for key in unfilled:
        shape = tuple(target_state[key].shape)
        mine = [k for k in unfilled if leaf(k) == leaf(key) and tuple(target_state[k].shape) == shape]
        theirs = [k for k in nowhere if leaf(k) == leaf(key) and codes.shape_of(k) == shape]
        if len(mine) == 1 and len(theirs) == 1:
            result.sources[key] = Source("copy", (theirs[0],), shape=shape)
            result.by_name[key] = theirs[0]
        else:
            result.problems.append(f"target {quote(key)} {shape}: no original element lands in it"
                                   + (f" (candidates by name: {listing(theirs)})" if theirs else ""))


# --------------------------------------------------------------------------- the draft module


def _op_source(op) -> str:
    if isinstance(op, _Inverse):
        return _op_source(op.op) + ".reversed()"
    if isinstance(op, Split):
        return f"Split({op.source!r}, {op.targets!r}, dim={op.dim})"
    if isinstance(op, Reshape):
        return f"Reshape({op.key!r}, {op.shape!r}, {op.back!r})"
    if isinstance(op, Transpose):
        return f"Transpose({op.key!r}, {op.dims!r})"
    if isinstance(op, Drop):
        return f"Drop({op.key!r})"
    raise DraftError(f"no source form for {type(op).__name__}")


def module_text(result: Draft, what: str) -> str:
    """The draft family module: its plan as data, what to review as comments."""
    import transformers

    by_name = {v for v in result.by_name.values()}
    lines = ['"""Drafted plan: ' + what.replace('"""', "'''") + ".",
             "",
             f"Written by `python -m converters.draft` (transformers {transformers.__version__}, {result.seconds:.1f} s) from where",
             "each original element lands in the oracle and in the transformers model. Review it, then",
             "complete the Family (cases, original layout, oracle, configurations): the harness proves it.",
             '"""', "",
             "from converters.plan import Drop, Plan, Rename, Reshape, Split, Transpose  # noqa: F401", ""]
    if result.verified:
        lines.append(f"# Checked: the converted model's output against the oracle's, max abs diff {result.verified[0]:.3g} "
                     f"(tolerance {result.verified[1]:.3g}), random weights")
        lines.append("")
    if result.notes:
        lines.append("# Decided by names or outputs:")
        lines += [f"#   {quote(n, 300)}" for n in result.notes]
        lines.append("")
    if result.problems:
        lines.append("# To review:")
        lines += [f"#   {quote(p, 300)}" for p in result.problems]
        lines.append("")
    lines.append("PLAN = Plan(")
    lines.append("    ops=(")
    for op in result.plan.ops:
        lines.append(f"        {_op_source(op)},")
    lines.append("    ),")
    lines.append("    renames=(")
    for rule in result.plan.renames:
        note = "  # paired by name: the oracle does not hold it" if rule.source in by_name else ""
        lines.append(f"        Rename({rule.source!r}, {rule.target!r}),{note}")
    lines.append("    ),")
    lines.append(")")
    lines += ["", "", "def plan(case):", "    return PLAN", ""]
    return "\n".join(lines)


def write_module(text: str, path: Path) -> None:
    """Write atomically (a temporary file in the same folder, then renamed), never over a file."""
    path = Path(path)
    if path.exists():
        raise DraftError(f"{path}: exists; the draft is never written over a file")
    compile(text, str(path), "exec")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- sources of a draft


def timm_loader(name: str, **kwargs) -> Callable[[dict], nn.Module]:
    """timm's `create_model(name)` loaded through its model module's own checkpoint filter."""
    import importlib

    import timm

    from .reference import timm_model

    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **kwargs)
    owner = importlib.import_module(type(probe).__module__)
    filter_fn = getattr(owner, "checkpoint_filter_fn", None) or getattr(owner, "_filter_fn", None)
    return lambda state: timm_model(name, state, filter_fn, **kwargs)


def transformers_model(class_name: str, config: Mapping) -> nn.Module:
    from . import compat

    cls = compat.get_class(class_name)
    return compat.build_model(class_name, cls.config_class(**config), device="meta")


OUTPUTS = ("logits", "last_hidden_state", "pooler_output")
TOLERANCE = 1e-4  # a wrong pairing moves random-weight outputs by O(1); float32 reorderings by < 1e-5


def output_check(layout, oracle: Callable[[dict], Callable], target_class: str, config, size: int,
                 output: str | None = None, tolerance: float = TOLERANCE) -> Check:
    """plan -> (max abs diff, tolerance) of the transformers model holding the converted random
    original against the oracle holding it, on one random image. `output`: the model output
    compared (default: the first of OUTPUTS of the oracle's shape)."""
    from . import compat
    from .case import random_state

    state = random_state(layout, 0)
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = oracle(dict(state))(pixels)

    def check(plan: Plan) -> tuple[float, float]:
        converted, _ = plan.forwards(state)
        model = compat.build_model(target_class, config, device="meta")
        if set(dict(model.named_buffers())) - set(model.state_dict()):  # computed buffers: built on the CPU
            model = compat.build_model(target_class, config)
        try:
            model.load_state_dict(converted, strict=True, assign=True)
        except RuntimeError:
            return float("inf"), tolerance
        with torch.no_grad():
            outputs = model(pixels)
        names = [output] if output else [n for n in OUTPUTS if getattr(outputs, n, None) is not None
                                         and tuple(getattr(outputs, n).shape) == tuple(expected.shape)]
        if not names or tuple(getattr(outputs, names[0]).shape) != tuple(expected.shape):
            return float("inf"), tolerance
        return float((getattr(outputs, names[0]) - expected).abs().max()), tolerance

    return check


def draft_file(path, oracle: str, target: str, config: Mapping, oracle_args: Mapping, unwrap=("state_dict", "model", "module")) -> Draft:
    from . import compat
    from .checkpoint import load

    kind, _, name = oracle.partition(":")
    if kind != "timm" or not name:
        raise DraftError(f"--oracle {quote(oracle)}: expected timm:MODEL_NAME")
    layout = meta_state(load(path, "--layout", unwrap=unwrap).state)
    loader = timm_loader(name, **oracle_args)
    model = transformers_model(target, config)
    size = _pixels(model).shape[-1]
    check = output_check(layout, loader, target, compat.get_class(target).config_class(**config), size)
    return draft(layout, loader, model, check)


def small_case(case, config: Mapping | None = None):
    """The case at its family's first small configuration (`Family.mutants`) or its random-weights
    size, with `config` overrides."""
    from .registry import family_of

    family = family_of(case)
    overrides = next((dict(s.overrides) for s in family.mutants if s.case_id == case.id), {})
    case = case.for_random_weights()
    return replace(case, config={**case.config, **overrides, **(config or {})})


def draft_case(case, oracle: Callable | None = None) -> tuple[Draft, dict, Codes]:
    """Draft from the case's family: its original layout, its oracle (or `oracle(case, state)`)
    and the case's config."""
    from . import compat
    from .core import build_config, original_layout
    from .registry import family_of

    family = family_of(case)
    layout = original_layout(case)
    config = build_config(case)
    target = compat.build_model(case.model_class, config, device="meta")
    load = lambda state: (oracle or family.oracle)(case, state)  # noqa: E731
    check = output_check(layout, load, case.model_class, config, case.image_size, case.output, max(case.atol, TOLERANCE))
    result = draft(layout, load, target, check)
    return result, layout, distinct(layout)[1]


# --------------------------------------------------------------------------- compare with a hand-written plan


def _ops_effect(plan: Plan, layout) -> dict:
    """What a plan's ops do on this layout: per original key, the ops that take it."""
    from .plan import Template

    def keys_of(op):
        if isinstance(op, _Inverse):
            op = op.op
            return [k for k in layout if any(Template(t).match(k) is not None for t in op.targets)]
        return [k for k in layout if Template(getattr(op, "key", None) or op.source).match(k) is not None]

    effect = {}
    for op in plan.ops:
        for key in keys_of(op):
            kind = type(op.op).__name__ + ".reversed" if isinstance(op, _Inverse) else type(op).__name__
            restore = isinstance(op, Drop) and op.restore is not None
            effect.setdefault(key, []).append(kind + (" (restored)" if restore else ""))
    return effect


@dataclass
class Comparison:
    case_id: str
    differences: list[str]
    draft: Draft
    hand_rules: int
    verbatim: int  # hand-written rules the draft holds unedited
    forward_equal: bool  # both plans give the same transformers state dict from the same original
    case: object = None  # the case as drafted (its small configuration)

    @property
    def exact(self) -> bool:
        return not self.differences


def _normal(text: str) -> str:
    import re

    return re.sub(r"\{\w+\}", "{}", text)


def _rule_texts(plan: Plan) -> list[str]:
    texts = [f"rename {_normal(r.source)} -> {_normal(r.target)}" for r in plan.renames]
    texts += [_normal(_op_source(op)) for op in plan.ops]
    return texts


def compare(case, oracle: Callable | None = None) -> Comparison:
    """Draft `case` from its family's layout, oracle (or `oracle(case, state)`) and config;
    compare with the family's plan."""
    from .core import plan_of, target_layout

    result, layout, codes = draft_case(case, oracle)
    coded, _ = distinct(layout)
    hand = plan_of(case)  # the family's plan, its names for the installed transformers line resolved
    target = target_layout(case)
    diffs = []
    outputs = {}
    for name, plan in (("hand", hand), ("draft", result.plan)):
        out, coverage = plan.forwards(coded, target=target)
        outputs[name] = (out, coverage)
        if not coverage.ok:
            diffs += [f"{name} plan coverage: {p}" for p in coverage.problems()[:SHOWN]]
    (hand_out, hand_cov), (draft_out, draft_cov) = outputs["hand"], outputs["draft"]
    hand_map, draft_map = land(codes, hand_out), land(codes, draft_out)
    for key in sorted(set(hand_map.sources) | set(draft_map.sources)):
        a, b = hand_map.sources.get(key), draft_map.sources.get(key)
        if a != b:
            diffs.append(f"{quote(key)}: hand {a.text() if a else 'nothing'}, draft {b.text() if b else 'nothing'}")
    if sorted(hand_cov.dropped) != sorted(draft_cov.dropped):
        diffs.append(f"dropped: hand {listing(hand_cov.dropped)}, draft {listing(draft_cov.dropped)}")
    hand_ops, draft_ops = _ops_effect(hand, layout), _ops_effect(result.plan, layout)
    for key in sorted(set(hand_ops) | set(draft_ops), key=list(layout).index):
        if hand_ops.get(key) != draft_ops.get(key):
            diffs.append(f"ops on {quote(key)}: hand {hand_ops.get(key, [])}, draft {draft_ops.get(key, [])}")
    unequal = sorted(k for k in set(hand_out) & set(draft_out) if not torch.equal(hand_out[k], draft_out[k]))
    forward_equal = not unequal and set(hand_out) == set(draft_out)
    if not forward_equal:
        diffs.append(f"forward state dicts differ: {listing(unequal + sorted(set(hand_out) ^ set(draft_out)))}")
    backs = {}
    # what a backwards pass gives back: the coded original, where a computed buffer (real in the
    # layout) is restored to its own value
    expected = {k: (v if layout[k].is_meta else layout[k]) for k, v in coded.items()}
    for name, plan, out in (("hand", hand, hand_out), ("draft", result.plan, draft_out)):
        back, _ = plan.backwards(out, target=coded)
        backs[name] = back
        wrong = sorted(k for k in back if k not in expected or not torch.equal(back[k], expected[k]))
        lost = sorted(set(coded) - set(back))
        if wrong or lost:
            diffs.append(f"{name} plan backwards: {len(lost)} original keys not restored ({listing(lost)}), "
                         f"{len(wrong)} not bit-equal ({listing(wrong)})")
    if set(backs["hand"]) != set(backs["draft"]):
        diffs.append(f"backwards key sets differ: {listing(sorted(set(backs['hand']) ^ set(backs['draft'])))}")
    hand_texts, draft_texts = _rule_texts(hand), set(_rule_texts(result.plan))
    verbatim = sum(1 for t in hand_texts if t in draft_texts)
    return Comparison(case.id, diffs, result, len(hand_texts), verbatim, forward_equal, case)


def one_case_per_family() -> list:
    """Each family's first small configuration's case (its first case when it declares none)."""
    from .registry import families, get

    chosen = []
    for family in families().values():
        case = get(family.mutants[0].case_id) if family.mutants else family.cases[0]
        chosen.append(case)
    return chosen


def _comparison_lines(c: Comparison) -> list[str]:
    d = c.draft
    head = (f"{c.case_id}: {'exact' if c.exact else 'differs'}; drafted in {d.seconds:.1f} s: {len(d.plan.renames)} renames, "
            f"{len(d.plan.ops)} ops; hand plan {c.hand_rules} rules, {c.verbatim} of them in the draft unedited")
    lines = [head]
    lines += [f"  by name: {quote(t)} <- {quote(o)}" for t, o in d.by_name.items()]
    lines += [f"  decided: {n}" for n in d.notes[:SHOWN]]
    lines += [f"  review: {p}" for p in d.problems[:SHOWN]]
    lines += [f"  - {x}" for x in c.differences[:SHOWN]]
    if len(c.differences) > SHOWN:
        lines.append(f"  ... ({len(c.differences) - SHOWN} more differences)")
    return lines


# --------------------------------------------------------------------------- command line


def _assignments(items) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DraftError(f"{quote(item)}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.draft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", type=Path, help="an original checkpoint file (read with weights_only)")
    parser.add_argument("--oracle", help="timm:MODEL_NAME")
    parser.add_argument("--oracle-arg", action="append", help="KEY=VALUE for the oracle's create_model (repeatable)")
    parser.add_argument("--target", help="the transformers model class")
    parser.add_argument("--config", action="append", help="KEY=VALUE of the transformers config (repeatable)")
    parser.add_argument("--unwrap", action="append", help="the file's entry holding the weights (default: state_dict, model, module)")
    parser.add_argument("--out", type=Path, help="write the draft module here (never over a file)")
    parser.add_argument("--case", help="a registered case: draft from its family's layout, oracle and config")
    parser.add_argument("--all", action="store_true", help="one case per family")
    parser.add_argument("--compare", action="store_true", help="compare with the family's own plan")
    args = parser.parse_args(argv)
    try:
        if args.case or args.all:
            from .registry import get

            cases = [get(args.case)] if args.case else one_case_per_family()
            return _run_cases(cases, args)
        if not (args.layout and args.oracle and args.target):
            parser.error("--layout, --oracle and --target (or --case / --all)")
        result = draft_file(args.layout, args.oracle, args.target, _assignments(args.config), _assignments(args.oracle_arg),
                            tuple(args.unwrap) if args.unwrap else ("state_dict", "model", "module"))
        what = f"{quote(args.layout.name)} -> {args.target} through {quote(args.oracle)}"
        return _emit(result, what, args.out)
    except (DraftError, PairingError, LandingError) as e:
        print(f"draft: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the loader's and the models' own errors, named once
        from .checkpoint import CheckpointError

        if isinstance(e, CheckpointError):
            print(f"draft: {e}", file=sys.stderr)
            return 1
        raise


def _emit(result: Draft, what: str, out: Path | None) -> int:
    text = module_text(result, what)
    for problem in result.problems:
        print(f"draft: review: {problem}", file=sys.stderr)
    if out is None:
        print(text)
    else:
        write_module(text, out)
        print(f"draft: wrote {out} ({len(result.plan.renames)} renames, {len(result.plan.ops)} ops, {result.seconds:.1f} s)", file=sys.stderr)
    return 2 if result.problems else 0


def _run_cases(cases, args) -> int:
    from .compat import unsupported

    exact, total = 0, 0
    for case in cases:
        case = small_case(case, _assignments(args.config))
        total += 1
        reason = unsupported(case)
        if reason:
            print(f"{case.id}: not drafted: {reason}", flush=True)
            continue
        if not args.compare:
            result, _, _ = draft_case(case)
            if args.out and len(cases) == 1:
                return _emit(result, f"case {case.id}", args.out)
            print(module_text(result, f"case {case.id}"))
            continue
        try:
            comparison = compare(case)
        except (DraftError, PairingError, LandingError, InduceError) as e:
            print("\n".join([f"{case.id}: not drafted:", *[f"  {line}" for line in str(e).splitlines()[:SHOWN + 3]]]), flush=True)
            continue
        exact += comparison.exact
        print("\n".join(_comparison_lines(comparison)), flush=True)
    if args.compare:
        print(f"drafted {exact} of {total} {'families' if args.all else 'cases'} exactly")
    return 0 if exact == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
