"""ViTs with layer scale, separate q and v biases and relative position bias tables: one original code
base's layout, shared by the families built on it (their transformers ports share module names too).

Original keys, in the original `state_dict` order (`modeling_finetune.py` / the pre-training model):

    cls_token, [mask_token], patch_embed.proj, [rel_pos_bias.relative_position_bias_table,
    rel_pos_bias.relative_position_index], blocks.{i}.{gamma_1, gamma_2, norm1, attn.q_bias, attn.v_bias,
    [attn.relative_position_bias_table, attn.relative_position_index], attn.qkv.weight, attn.proj, norm2,
    mlp.fc1, mlp.fc2}, then fc_norm and head (classifier) or norm and lm_head (pre-training)

Two layouts: a classifier holds one bias table per block (`blocks.{i}.attn.relative_position_*`), mean
pooling through `fc_norm` and `head`; the pre-training model holds one table shared by all blocks
(`rel_pos_bias.*`), `mask_token`, a final `norm` and `lm_head` (which the transformers base model
has no place for: dropped, not restorable). The qkv weight is fused (q, k, v), its biases are q and v
only; `gamma_1/2` are transformers' `lambda_1/2`; `relative_position_index` buffers are recomputed
by transformers (dropped, rebuilt on the way back). timm's model of the architecture differs only in
what it lacks: the index buffers (non-persistent there) and the pre-training extras.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from . import vit_blocks
from .plan import Drop, Line, Plan, Rename


def relative_position_index(window: int) -> torch.Tensor:
    """The original relative_position_index buffer for a square `window` of patches plus the class
    token: (window² + 1, window² + 1) int64 indices into the bias table, whose last three rows are
    cls->patch, patch->cls and cls->cls."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    num_distances = (2 * window - 1) ** 2 + 3
    index = torch.zeros((window * window + 1,) * 2, dtype=torch.int64)
    index[1:, 1:] = relative[..., 0] * (2 * window - 1) + relative[..., 1]
    index[0, :] = num_distances - 3
    index[:, 0] = num_distances - 2
    index[0, 0] = num_distances - 1
    return index


def _blocks(layer: str, table: str, projections: bool) -> tuple[Rename, ...]:
    """A block's renames: transformers' BERT-style names (`attention.attention.query`, ...,
    `intermediate.dense`, the table under the attention), or with `projections` the refactored ones
    (`attention.q_proj`, ..., `mlp.fc1`, the table on the layer)."""
    block = "blocks.{i}."
    if projections:
        attention, tables = vit_blocks.projections(block, layer), layer + "relative_position_bias."
        qv = (layer + "attention.q_proj.bias", layer + "attention.v_proj.bias")
        mlp: tuple[Rename, ...] = (Rename(block + "mlp.", layer + "mlp."),)
        norms = (Rename(block + "norm1.", layer + "layernorm_before."), Rename(block + "norm2.", layer + "layernorm_after."))
    else:
        attention, tables = vit_blocks.attention(block, layer), layer + "attention.attention.relative_position_bias."
        qv = (layer + "attention.attention.query.bias", layer + "attention.attention.value.bias")
        mlp, norms = vit_blocks.bert_block(block, layer), ()
    renames = (
        Rename(block + "gamma_1", layer + "lambda_1"),
        Rename(block + "gamma_2", layer + "lambda_2"),
        Rename(block + "attn.q_bias", qv[0]),  # no k bias
        Rename(block + "attn.v_bias", qv[1]),
        *attention, *mlp, *norms,
    )
    return renames + ((Rename(block + "attn.relative_position_bias_table", tables + "relative_position_bias_table"),) if table else ())


def plan(config: Mapping, classifier: bool, base: str, projections: tuple[int, ...] = ()) -> Plan:
    """The conversion for `config` (transformers' config arguments): `base` is the base model's
    attribute in transformers' model (its `base_model_prefix`): it prefixes every key of a classifier, whose
    head is `classifier.`; the pre-training layout converts into the base model itself. `projections`:
    the transformers major lines whose model is the refactored one (`layers.{i}.attention.q_proj`, ...,
    `layers.{i}.mlp`, the table on the layer); the other lines hold the BERT-style names."""
    window = config["image_size"] // config["patch_size"]
    prefix = f"{base}." if classifier else ""
    index = relative_position_index(window)
    renames = [
        Rename("cls_token", prefix + "embeddings.cls_token"),
        Rename("patch_embed.proj.", prefix + "embeddings.patch_embeddings.projection."),
    ]
    ops = list(vit_blocks.split_qkv(entries=("weight",)))  # the biases are q_bias and v_bias
    if classifier:
        renames += [Rename("fc_norm.", prefix + "pooler.layernorm."), Rename("head.", "classifier.")]
        ops.append(Drop("blocks.{i}.attn.relative_position_index", restore=lambda groups, state: index.clone()))
    else:
        renames += [
            Rename("mask_token", prefix + "embeddings.mask_token"),
            Rename("rel_pos_bias.relative_position_bias_table", prefix + "encoder.relative_position_bias.relative_position_bias_table"),
            Rename("norm.", prefix + "layernorm."),
        ]
        ops += [
            Drop("rel_pos_bias.relative_position_index", restore=lambda groups, state: index.clone()),
            Drop("lm_head."),  # the pre-training head: the base model has none
        ]
    bert = _blocks(prefix + "encoder.layer.{i}.", classifier, projections=False)
    if not projections:
        return Plan(renames=tuple(renames) + bert, ops=tuple(ops))
    lines = {major: Line(renames=_blocks(prefix + "layers.{i}.", classifier, projections=True)) for major in projections}
    return Plan(renames=tuple(renames), ops=tuple(ops), by_line={**{major: Line(renames=bert) for major in (4, 5)}, **lines})


def original_layout(config: Mapping, classifier: bool) -> dict[str, torch.Tensor]:
    """The original model's state dict for `config`, key for key: meta tensors, except the
    relative_position_index buffers, which are real (the original computes them)."""
    c = config
    dim, depth, heads, mlp = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"]
    window = c["image_size"] // c["patch_size"]
    table = ((2 * window - 1) ** 2 + 3, heads)
    shapes = {"cls_token": (1, 1, dim)}
    if not classifier:
        shapes["mask_token"] = (1, 1, dim)
    shapes |= {"patch_embed.proj.weight": (dim, 3, c["patch_size"], c["patch_size"]), "patch_embed.proj.bias": (dim,)}
    if not classifier:
        shapes["rel_pos_bias.relative_position_bias_table"] = table
        shapes["rel_pos_bias.relative_position_index"] = None
    for i in range(depth):
        p = f"blocks.{i}."
        shapes |= {p + "gamma_1": (dim,), p + "gamma_2": (dim,)}
        shapes |= {p + "norm1.weight": (dim,), p + "norm1.bias": (dim,)}
        shapes |= {p + "attn.q_bias": (dim,), p + "attn.v_bias": (dim,)}
        if classifier:
            shapes |= {p + "attn.relative_position_bias_table": table, p + "attn.relative_position_index": None}
        shapes |= {p + "attn.qkv.weight": (3 * dim, dim), p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,)}
        shapes |= {p + "norm2.weight": (dim,), p + "norm2.bias": (dim,)}
        shapes |= {p + "mlp.fc1.weight": (mlp, dim), p + "mlp.fc1.bias": (mlp,)}
        shapes |= {p + "mlp.fc2.weight": (dim, mlp), p + "mlp.fc2.bias": (dim,)}
    if classifier:
        shapes |= {"fc_norm.weight": (dim,), "fc_norm.bias": (dim,)}
        shapes |= {"head.weight": (c["num_labels"], dim), "head.bias": (c["num_labels"],)}
    else:
        shapes |= {"norm.weight": (dim,), "norm.bias": (dim,)}
        shapes |= {"lm_head.weight": (dim, dim), "lm_head.bias": (dim,)}
    index = relative_position_index(window)
    return {k: index.clone() if s is None else torch.empty(s, device="meta") for k, s in shapes.items()}


def oracle(config: Mapping, classifier: bool, original: Mapping[str, torch.Tensor], arch: str, filter_fn: Callable):
    """timm's model of the architecture (`arch`, sized by `config`) loaded through timm's own
    checkpoint filter (`filter_fn`, which drops the index buffers). A classifier: mean pooling and its head;
    the pre-training layout: the shared bias table, no pooling or head, all tokens after the final
    norm (timm has no pre-training heads: `mask_token` and `lm_head` are left out)."""
    from .reference import timm_model

    c = config
    common = dict(embed_dim=c["hidden_size"], depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                  mlp_ratio=c["intermediate_size"] / c["hidden_size"], img_size=c["image_size"], patch_size=c["patch_size"],
                  use_abs_pos_emb=False, init_values=0.1)
    if classifier:
        return timm_model(arch, original, filter_fn, **common, use_rel_pos_bias=True,
                          use_shared_rel_pos_bias=False, num_classes=c["num_labels"], global_pool="avg")
    state = {k: v for k, v in original.items() if k != "mask_token" and not k.startswith("lm_head.")}
    model = timm_model(arch, state, filter_fn, **common, use_rel_pos_bias=False,
                       use_shared_rel_pos_bias=True, num_classes=0, use_fc_norm=False)
    return model.forward_features  # all tokens after the final norm: last_hidden_state


def configurations(classifier: bool, tiny: bool):
    """Any depth, heads x head size, MLP size, patch size and window (image = patch x window), and
    for a classifier any number of classes."""
    from hypothesis import strategies as st

    @st.composite
    def config(draw):
        heads = draw(st.integers(1, 4 if tiny else 16))
        patch = draw(st.sampled_from([2, 4, 8, 16] if tiny else [4, 8, 14, 16, 32]))
        window = draw(st.integers(1, 4 if tiny else 16))
        overrides = {
            "num_attention_heads": heads,
            "hidden_size": heads * draw(st.integers(1, 8) if tiny else st.integers(1, 64)),
            "num_hidden_layers": draw(st.integers(1, 3 if tiny else 24)),
            "intermediate_size": draw(st.integers(1, 64) if tiny else st.integers(1, 4096)),
            "patch_size": patch,
            "image_size": patch * window,
        }
        if classifier:
            overrides["num_labels"] = draw(st.integers(1, 16 if tiny else 2000))
        return overrides

    return config()


# a small configuration for mutants: milliseconds a forward, two blocks, two heads
SMALL = {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 48, "image_size": 64,
         "patch_size": 16}
