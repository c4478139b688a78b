"""What a validated conversion leaves behind: the folder, its validation record and model card.

Folders are written under a staging name next to their destination and renamed into place, so a
reader (or a crash) never sees a half-written output, and an existing output is never replaced.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path


class OutputExists(FileExistsError):
    pass


def versions() -> dict[str, str]:
    import huggingface_hub
    import numpy
    import PIL
    import safetensors
    import timm
    import torch
    import transformers

    mods = dict(torch=torch, timm=timm, transformers=transformers, huggingface_hub=huggingface_hub,
                safetensors=safetensors, numpy=numpy, pillow=PIL)
    return {"python": platform.python_version()} | {name: m.__version__ for name, m in mods.items()}


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh directory on the destination's file system (so the final rename is atomic)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".staging-{name}-{os.getpid()}-", dir=parent))


def remove_stale_staging(parent: Path) -> list[Path]:
    """Staging folders left by a killed run (their process is gone): never outputs, only clutter."""
    removed = []
    for folder in parent.glob(".staging-*-*-*") if parent.is_dir() else ():
        pid = folder.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def publish(staging: Path, final: Path) -> Path:
    """Rename a complete staging folder into place; never replace an existing output."""
    if final.exists():
        raise OutputExists(f"{final} exists and is not overwritten: remove it or choose another --save directory")
    _share_like_umask(staging)
    os.rename(staging, final)  # atomic on one file system; fails rather than replacing a non-empty dir
    return final


def _share_like_umask(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; outputs get the user's usual ones."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def stage(case, folder: Path, processor, model=None, original=None, source_path=None, on_shard=None) -> dict:
    """Write the weights, config and preprocessor config of a conversion into `folder` (a staging
    folder): `model.save_pretrained`, or for a streamed case the original tensors converted shard
    by shard and verified (`converters.stream.save`). Returns figures for the record."""
    figures = {}
    if case.streamed:
        from .stream import save

        streamed = save(case, original, folder, source_path=source_path, on_shard=on_shard)
        figures = {"tensors_verified": streamed.tensors, "shards": len(streamed.files)}
    else:
        model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return figures


def finish_save(case, staging: Path, destination: Path, validation: dict) -> Path:
    """Complete a staged folder (weights and preprocessor in it) with validation.json and the model
    card, then rename it into place atomically. The one way the harness saves a case: session
    finish and the tests that kill a save midway both call it."""
    write_json(staging / "validation.json", validation)
    model_card(case, validation).save(staging / "README.md")
    return publish(staging, destination)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def model_card(case, validation: dict):
    """A huggingface_hub ModelCard with the source, the validation table, versions and weights mode."""
    from huggingface_hub import ModelCard, ModelCardData

    random = validation["original"]["weights"] != "pretrained"
    data = ModelCardData(library_name="transformers", tags=["vision", "image-classification", case.family],
                         pipeline_tag="image-classification" if validation["output"] == "logits" else "image-feature-extraction")
    rows = "\n".join(
        f"| {name} | {c['status']} | {_fmt(c.get('max_abs_diff'))} | {_fmt(c.get('atol'))} | {c.get('reason') or ''} |"
        for name, c in validation["checks"].items()
    )
    warning = ("\n> **Random weights.** This folder was converted from a synthetic checkpoint with random "
               "tensors to test the conversion; it is not a usable model.\n") if random else ""
    body = f"""---
{data.to_yaml()}
---

# {case.hub_name}
{warning}
Converted from the original checkpoint `{validation['original']['source']}` ({case.family}) to
`{case.model_class}` and validated by the conversion harness.

## Validation

Weights: **{validation['original']['weights']}**. Images: {', '.join(validation['images'])}.

| check | status | max abs diff | tolerance | note |
|---|---|---|---|---|
{rows}

## Versions

{', '.join(f'{k} {v}' for k, v in validation['versions'].items())}
"""
    return ModelCard(body)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3g}"


def divergence_summary(case, checks: dict) -> str | None:
    """One plain line for the terminal summary when a case is converted with a known difference
    from the original evaluation (`Case.pixel_divergence`, `Case.output_divergence`)."""
    said = []
    if case.pixel_divergence:
        worst = checks.get("pixel_values", {}).get("max_abs_diff")
        said.append("its image processor gives other pixel values than the original evaluation"
                    + (f" (max abs diff {worst:.3g})" if worst is not None else ""))
    if case.output_divergence:
        said.append("its outputs differ from the original evaluation's by design (see the card)")
    return f"known difference: {'; '.join(said)}" if said else None


def divergence_notice(case, validation: dict) -> str | None:
    """The plain-language paragraph for the top of the model card of a case converted with a known
    difference from the original evaluation: what differs, by how much (measured), what to do."""
    checks = validation.get("checks", {})
    paragraphs = []
    if case.pixel_divergence:
        pixel = checks.get("pixel_values", {})
        worst = pixel.get("max_abs_diff")
        measured = f"by up to {worst:.3g} (max abs diff of normalised pixel values on the test images)" if worst is not None else "slightly"
        original = f"timm's evaluation transform of `{case.timm_tag}`" if case.timm_tag else "the original evaluation transform"
        paragraphs.append(
            f"> **Known difference: preprocessing.** The image processor saved here gives pixel values that differ "
            f"from the original evaluation's {measured}, so predictions can differ slightly from the published "
            f"accuracy figures. The weights themselves are converted exactly. Cause: {case.pixel_divergence}. "
            f"To reproduce the original evaluation, preprocess images with {original} and pass the tensor as "
            "`pixel_values`.")
    if case.output_divergence:
        logits = checks.get("logits", {})
        figure = logits.get("max_abs_diff")
        against = f" (max abs diff {figure:.3g} against that implementation)" if figure is not None else ""
        paragraphs.append(
            f"> **Known difference: outputs.** The weights are converted exactly and the outputs match an "
            f"independent implementation that makes the same choice as transformers{against}, but they differ from "
            f"the original evaluation's: {case.output_divergence}. Where exact agreement with the original "
            "evaluation matters, run the original code or an input size at which they agree.")
    return "\n>\n".join(paragraphs) if paragraphs else None
