"""What a validated conversion leaves behind: the folder, its validation record and model card.

Folders are written under a staging name next to their destination and renamed into place, so a
reader (or a crash) never sees a half-written output, and an existing output is never replaced.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
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
    """Written whole or not at all: a failure (ENOSPC, a directory in the way) leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(strict_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def strict_json(value):
    """NaN and Infinity are not JSON: a non-finite figure becomes null, and the mapping holding it
    says under "non_finite" what it was."""
    if isinstance(value, dict):
        non_finite = {k: repr(v) for k, v in value.items() if isinstance(v, float) and not math.isfinite(v)}
        out = {k: None if k in non_finite else strict_json(v) for k, v in value.items()}
        return out | ({"non_finite": non_finite} if non_finite else {})
    if isinstance(value, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else strict_json(v) for v in value]
    return value


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


def stage(case, folder: Path, processor, model=None, original=None, source_path=None) -> dict:
    """Write the weights, config and preprocessor config of a conversion into `folder` (a staging
    folder): `model.save_pretrained`, or for a streamed case the original tensors converted shard
    by shard and verified (`converters.stream.save`). Returns figures for the record."""
    figures = {}
    if case.streamed:
        from .stream import save

        streamed = save(case, original, folder, source_path=source_path)
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
        f"| {_cell(name)} | {_cell(c['status'])} | {_fmt(c.get('max_abs_diff'))} | {_fmt(c.get('atol'))} | {_cell(c.get('reason') or '')} |"
        for name, c in validation["checks"].items()
    )
    warning = ("\n> **Random weights.** This folder was converted from a synthetic checkpoint with random "
               "tensors to test the conversion; it is not a usable model.\n") if random else ""
    body = f"""---
{data.to_yaml()}
---

# {case.hub_name}
{warning}
Converted from the original checkpoint {_code(validation['original']['source'])}{_sha(validation)} ({case.family}) to
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


def _cell(text: str) -> str:
    """Text for one cell of a markdown table: a `|`, a backtick or a newline would break the table."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\r", "").replace("\n", "<br>")


def _code(text: str) -> str:
    """Inline code holding any text on one line: its fence is longer than any run of backticks in it."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _sha(validation: dict) -> str:
    sha256 = validation["original"].get("sha256")
    return f" (sha256 `{sha256}`)" if sha256 else ""


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3g}"
