"""What ViT-style families share: the fused qkv projection split into transformers' query, key and
value, the attention output projection, and the BERT-style block names (`layernorm_before`,
`intermediate.dense`, ...) of transformers' ViT, ViT-hybrid, BEiT and data2vec-vision.

Original ViT code (timm, BEiT, DINOv2) names a block `blocks.{i}.` with `attn.qkv` (3C, C) fused
in q, k, v order, `attn.proj`, `norm1`, `norm2`, `mlp.fc1`, `mlp.fc2`.
"""

from __future__ import annotations

from .plan import Rename, Split

QKV = (("q", "query"), ("k", "key"), ("v", "value"))


def split_qkv(block: str = "blocks.{i}.", entries: tuple[str, ...] = ("weight", "bias")) -> tuple[Split, ...]:
    """Split each fused `attn.qkv.<entry>` into `attn.q.`, `attn.k.`, `attn.v.` (BEiT-style files
    fuse only the weight: their q and v biases are separate tensors)."""
    return tuple(Split(f"{block}attn.qkv.{entry}", tuple(f"{block}attn.{x}.{entry}" for x, _ in QKV)) for entry in entries)


def attention(block: str, layer: str, inner: str = "attention") -> tuple[Rename, ...]:
    """The split q, k, v and the output projection -> transformers' BERT-style
    `attention.<inner>.{query,key,value}` (ViT, BEiT: `attention`; Swin on 4.x: `self`) and
    `attention.output.dense`."""
    return tuple(Rename(f"{block}attn.{x}.", f"{layer}attention.{inner}.{name}.") for x, name in QKV) + (
        Rename(f"{block}attn.proj.", f"{layer}attention.output.dense."),
    )


def projections(block: str, layer: str) -> tuple[Rename, ...]:
    """The split q, k, v and the output projection -> transformers 5's `attention.{q,k,v,o}_proj`
    (DINOv2, Swin)."""
    return tuple(Rename(f"{block}attn.{x}.", f"{layer}attention.{x}_proj.") for x, _ in QKV) + (
        Rename(f"{block}attn.proj.", f"{layer}attention.o_proj."),
    )


def bert_block(block: str, layer: str) -> tuple[Rename, ...]:
    """Norms and MLP of a block under transformers' BERT-style names (ViT, BEiT, data2vec)."""
    return (
        Rename(f"{block}norm1.", f"{layer}layernorm_before."),
        Rename(f"{block}norm2.", f"{layer}layernorm_after."),
        Rename(f"{block}mlp.fc1.", f"{layer}intermediate.dense."),
        Rename(f"{block}mlp.fc2.", f"{layer}output.dense."),
    )
