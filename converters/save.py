"""What a validated conversion leaves behind: the staged weights, config and preprocessor config,
then its validation record and model card, renamed into place (`converters.atomic`)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from .atomic import publish, write_json
from .cards import model_card


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


def without_paths(data, paths):
    """`data` (JSON-like) with every local file path in it, wherever it is quoted (a skip reason, a
    note), replaced by the file's name: what is published says nothing of the machine it came from."""
    text = json.dumps(data)
    for path in sorted({str(p) for p in paths if p}, key=len, reverse=True):
        text = text.replace(json.dumps(path)[1:-1], json.dumps(os.path.basename(path))[1:-1])
    return json.loads(text)


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
