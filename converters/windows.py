"""Shifted-window attention (Swin-style originals): the stage geometry of a window attention model
and the buffers such originals compute and save in their state dicts, which transformers
recomputes: a plan drops them and rebuilds them on the way back (`Drop(restore=...)`).

`config` is the transformers configuration as a mapping (`image_size`, `patch_size`, `embed_dim`,
`depths`, `window_size`). Originals clip a window larger than its stage's map to the map and do
not shift it; every other odd block of a stage is shifted by half a window.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterator, Mapping

import torch

from .plan import Drop


def stages(config: Mapping) -> Iterator[tuple[int, int, int, int, int]]:
    """(stage, resolution, width, window, depth) of each stage; the window is clipped to the map."""
    grid = config["image_size"] // config["patch_size"]
    for i, depth in enumerate(config["depths"]):
        resolution = grid // 2**i
        yield i, resolution, config["embed_dim"] * 2**i, min(config["window_size"], resolution), depth


def shift(config: Mapping, stage: int, block: int) -> int:
    """The cyclic shift of block `block` of stage `stage`: 0 for even blocks and one-window maps."""
    resolution, window = {i: (r, w) for i, r, _, w, _ in stages(config)}[stage]
    return 0 if block % 2 == 0 or resolution <= window else window // 2


def relative_position_index(window: int) -> torch.Tensor:
    """A window attention's `relative_position_index`: (window², window²) indices into the (2w-1)² table."""
    return _relative_position_index(window).clone()  # every block holds one: computed once per window


def attention_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    """A shifted block's `attn_mask`: (windows, w², w²), 0 within a region of the rolled map and
    -100 across regions."""
    return _attention_mask(resolution, window, shift).clone()


@lru_cache(maxsize=None)
def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


@lru_cache(maxsize=None)
def _attention_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    regions = torch.zeros(resolution, resolution)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for n, (h, w) in enumerate((h, w) for h in cuts for w in cuts):
        regions[h, w] = n
    k = resolution // window
    windows = regions.view(k, window, k, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    return (windows[:, None, :] - windows[:, :, None]).ne(0).float() * -100.0


def buffer_drops(config: Mapping, block: str) -> tuple[Drop, Drop]:
    """Drops of the index (`<block>attn.relative_position_index`) and the shifted blocks' mask
    (`<block>attn_mask`), each rebuilt for its stage's geometry on the way back; `block` is the
    original's block template with placeholders `{i}` (stage) and `{j}` (block)."""
    geometry = {i: (r, w) for i, r, _, w, _ in stages(config)}
    index = Drop(block + "attn.relative_position_index",
                 restore=lambda g, state: relative_position_index(geometry[int(g["i"])][1]))
    mask = Drop(block + "attn_mask", restore=lambda g, state: attention_mask(
        *geometry[int(g["i"])], shift(config, int(g["i"]), int(g["j"]))))
    return index, mask


def layout(config: Mapping, attention: Callable[[str, int, int, int], dict], merged_norm: int) -> dict[str, torch.Tensor]:
    """A Swin-style original's state dict, key for key in its order: patch_embed.{proj, norm},
    layers.{i}.blocks.{j}.{attn_mask (shifted blocks), norm1, attn.*, norm2, mlp.fc1, mlp.fc2},
    layers.{i}.downsample.{reduction, norm} at the end of every stage but the last, norm, head.
    `attention(prefix, stage, width, window)` gives a block's `attn.` entries (shapes, or real tensors
    for the buffers the original computes); the downsampling's norm has `merged_norm` times the stage's
    width (before or after the reduction to 2C). Shapes become meta tensors."""
    dim, patch = config["embed_dim"], config["patch_size"]
    shapes: dict = {"patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
                    "patch_embed.norm.weight": (dim,), "patch_embed.norm.bias": (dim,)}
    geometry = list(stages(config))
    for i, resolution, width, window, depth in geometry:
        hidden = int(width * config.get("mlp_ratio", 4.0))
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            if shift(config, i, j):  # the block's own buffer comes before its children's entries
                shapes[p + "attn_mask"] = attention_mask(resolution, window, shift(config, i, j))
            shapes |= {p + "norm1.weight": (width,), p + "norm1.bias": (width,), **attention(p + "attn.", i, width, window),
                       p + "norm2.weight": (width,), p + "norm2.bias": (width,),
                       p + "mlp.fc1.weight": (hidden, width), p + "mlp.fc1.bias": (hidden,),
                       p + "mlp.fc2.weight": (width, hidden), p + "mlp.fc2.bias": (width,)}
        if i < len(geometry) - 1:
            shapes |= {f"layers.{i}.downsample.reduction.weight": (2 * width, 4 * width),
                       f"layers.{i}.downsample.norm.weight": (merged_norm * width,),
                       f"layers.{i}.downsample.norm.bias": (merged_norm * width,)}
    last = geometry[-1][2]
    shapes |= {"norm.weight": (last,), "norm.bias": (last,), "head.weight": (config["num_labels"], last),
               "head.bias": (config["num_labels"],)}
    return {k: s if isinstance(s, torch.Tensor) else torch.empty(s, device="meta") for k, s in shapes.items()}
