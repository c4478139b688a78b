"""Forward hooks that are always removed: the one way the library watches a forward pass (tracing
call order, localising a divergence, teacher-forced block parity, sizing a forward on meta tensors)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from torch import nn

Hooks = Iterable[tuple[nn.Module, Callable]]


@contextmanager
def forward_hooks(after: Hooks = (), *, before: Hooks = (), with_kwargs: bool = False) -> Iterator[None]:
    """Registers each (module, hook) as a forward hook (`after`) or forward pre-hook (`before`) for
    the block's duration; every handle is removed on the way out, an exception or a failed
    registration included, so a model is never left watched."""
    handles = []
    try:
        for module, hook in before:
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))
        for module, hook in after:
            handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()
