"""Module-order tracing: derive an explicit key map from two implementations of one network.

When an original and a transformers model differ in naming and nesting but not in math (ResNet,
RegNet), running both on the same input and listing the modules that hold weights, in the order
their forward ran, pairs them up: the i-th such module of one is the i-th of the other. Each pair
must hold the same local entries with the same shapes, so a pairing that drifts fails loudly
here, not later as a wrong logit.

The result is data: a whole-key map, turned into an ordinary `Plan` of whole-key renames, so
coverage, round trip, save/reload and the property tests treat it like any declared plan.
Tracing runs on the meta device by default: keys and shapes only, no memory, no arithmetic.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .hooks import forward_hooks
from .plan import Plan, Rename

Order = list[tuple[str, nn.Module]]


class TraceError(RuntimeError):
    pass


def _own_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own state dict entries (not its children's), in state-dict order."""
    return {k: v for k, v in module.state_dict(keep_vars=True).items() if "." not in k}


def call_order(model: nn.Module, *inputs) -> Order:
    """(qualified name, module) of every module holding weights or buffers of its own, in the
    order its forward ran. A module called twice counts once, at its first call."""
    names = {m: n for n, m in model.named_modules()}
    order: Order = []
    seen: set[int] = set()

    def hook(module, args, output):
        if id(module) not in seen and _own_state(module):
            seen.add(id(module))
            order.append((names[module], module))

    with forward_hooks((m, hook) for m in model.modules()), torch.no_grad():
        model(*inputs)
    never_called = sorted(n for n, m in model.named_modules() if _own_state(m) and id(m) not in seen)
    if never_called:
        raise TraceError(f"{type(model).__name__}: modules with weights never ran on the trace input: {', '.join(never_called)}")
    return order


def key_map(source: Order, target: Order) -> dict[str, str]:
    """Zip two call orders into whole-key pairs. Every problem is listed: a different number of
    modules, or a pair whose local entries or shapes differ."""
    problems = []
    if len(source) != len(target):
        problems.append(f"{len(source)} source modules with weights ran, {len(target)} target modules")
    mapping = {}
    for (src_name, src), (dst_name, dst) in zip(source, target):
        a, b = _own_state(src), _own_state(dst)
        shapes_a = [(k, tuple(v.shape)) for k, v in a.items()]
        shapes_b = [(k, tuple(v.shape)) for k, v in b.items()]
        if shapes_a != shapes_b:
            problems.append(f"{src_name} {shapes_a} does not pair with {dst_name} {shapes_b}")
            continue
        for key in a:
            mapping[_join(src_name, key)] = _join(dst_name, key)
    if problems:
        raise TraceError("module-order trace does not pair up:\n" + "\n".join(problems[:20]))
    return mapping


def trace_map(
    source: nn.Module,
    target: nn.Module,
    inputs: Sequence[torch.Tensor],
    reorder_source: Callable[[Order], Order] | None = None,
) -> dict[str, str]:
    """Source key -> target key for every entry of both state dicts, by module call order.
    `reorder_source` declares a known difference in call order (e.g. a shortcut run first)."""
    src_order = call_order(source, *inputs)
    if reorder_source is not None:
        src_order = reorder_source(src_order)
    mapping = key_map(src_order, call_order(target, *inputs))
    unmapped = sorted(set(source.state_dict()) - set(mapping)) + sorted(set(target.state_dict()) - set(mapping.values()))
    if unmapped:
        raise TraceError(f"state dict entries outside any traced module: {', '.join(unmapped)}")
    return mapping


def as_plan(mapping: dict[str, str], prefix: str = "") -> Plan:
    """An explicit plan: one whole-key rename per traced pair (sources optionally prefixed)."""
    return Plan(renames=tuple(Rename(prefix + src, dst) for src, dst in mapping.items()))


def _join(module_name: str, key: str) -> str:
    return f"{module_name}.{key}" if module_name else key
