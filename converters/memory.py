"""The memory budget of a forward pass on memory-mapped weights: what it needs (activations and one
layer's weight, sized on the meta device), what this machine or its memory cgroup leaves, and why a
case is too large when the first exceeds the second."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from . import compat
from .case import Case
from .hooks import forward_hooks

TOO_LARGE = "too large for a forward pass in this machine's memory"
MEMORY_BUDGET_ENV = "VISION_PORT_MEMORY_MB"  # overrides MemAvailable as the memory a forward pass may use


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def weight_bytes(case: Case) -> int:
    from .core import target_layout

    return sum(nbytes(t) for t in target_layout(case).values())


def forward_bytes(case: Case, images: int) -> int:
    """About the memory a forward pass of `images` images needs besides its weights, which stay
    pages of their memory-mapped file: three times the model's largest module output (a residual
    block holds its input for the shortcut, the branch's intermediate and its output at once),
    found by running it on the meta device (no memory, milliseconds), plus its largest weight:
    CPU convolution kernels copy a layer's weight into their blocked layout while the layer runs
    (measured: 310 MB of anonymous memory for a 306 MB 1x1 convolution)."""
    from .core import build_config

    model = compat.build_model(case.model_class, build_config(case), device="meta")
    largest = [0]

    def hook(module, args, output):
        outputs = [output] if isinstance(output, torch.Tensor) else (
            output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ())
        for t in outputs:  # a tensor, a tuple of them, or a ModelOutput (a dict)
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], nbytes(t))

    with forward_hooks((m, hook) for m in model.modules()), torch.inference_mode():
        model(pixel_values=torch.empty(images, 3, case.image_size, case.image_size, device="meta"))
    return 3 * largest[0] + max((nbytes(p) for p in model.parameters()), default=0)


def available_bytes() -> int:
    """What a forward pass may use: $VISION_PORT_MEMORY_MB if set, else the kernel's MemAvailable,
    or less where a memory cgroup limits this process (its limit minus the anonymous memory it
    holds: file pages, memory-mapped weights among them, are reclaimed under the limit)."""
    if os.environ.get(MEMORY_BUDGET_ENV):
        return int(float(os.environ[MEMORY_BUDGET_ENV]) * 2**20)
    found = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    available = int(found.group(1)) * 1024 if found else 2**63
    headroom = cgroup_headroom()
    return available if headroom is None else min(available, headroom)


def cgroup_headroom() -> int | None:
    """The memory cgroup's limit minus its anonymous memory (cgroup v1, or v2 at /sys/fs/cgroup);
    None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, limit_file, anon_key = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes", "total_rss"
        elif controllers == "" and (Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max").is_file():
            base, limit_file, anon_key = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max", "anon"
        else:
            continue
        try:
            limit = (base / limit_file).read_text().strip()
            stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
        except OSError:
            continue
        if limit != "max" and int(limit) < 2**60:
            return int(limit) - int(stat.get(anon_key, 0))
    return None


def too_large(case: Case, images: int = 1) -> str | None:
    """Why a forward pass of `images` images cannot run in the memory available, or None when it
    can. Streamed cases hold memory-mapped weights (page cache, reclaimable): only activations and
    kernel workspace need memory (`forward_bytes`). Other cases are built in memory anyway."""
    if not case.streamed:
        return None
    need, have = forward_bytes(case, images), available_bytes()
    if need <= have:
        return None
    return (f"{case.id}: {TOO_LARGE}: a forward pass of {images} image{'s' if images != 1 else ''} needs about {_size(need)} (activations and "
            f"one layer's weight; its {_size(weight_bytes(case))} of weights are memory-mapped), {_size(have)} available")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
