"""A saved folder loaded as users load a Hub repo: the Auto classes and their defaults, `pipeline()`,
never the repo's own code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .quote import error_text


class LoadError(RuntimeError):
    """A saved folder the Auto classes cannot load as its case declares; names the file and field."""


@dataclass
class AsLoaded:
    config: object
    processor: object  # AutoImageProcessor.from_pretrained(folder): the installed line's default
    processors: dict  # "default" and, on 5.x, "pil" (backend="pil")
    model: object
    pipeline: object | None  # pipeline("image-classification", model=folder) for classifiers


def load_as_users_do(folder: Path, case) -> AsLoaded:
    """A saved folder loaded with defaults only, as users load a Hub repo: AutoConfig,
    AutoImageProcessor (and backend="pil" on 5.x), the task's Auto model class, pipeline(). Never
    the repo's own code: `trust_remote_code=False` (the default, None, asks on the terminal when a
    repo maps a class to its Python files, and runs them on `y`)."""
    import transformers

    from . import compat

    folder = Path(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise LoadError(f"{case.id}: {folder / 'config.json'}: AutoConfig cannot load it (field model_type): "
                        f"{error_text(e)}") from None
    if type(config).__name__ != case.config_class:
        raise LoadError(f"{case.id}: {folder / 'config.json'}: model_type {config.model_type!r} loads "
                        f"{type(config).__name__}, the case declares {case.config_class}")
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:
        raise LoadError(f"{case.id}: {folder / 'preprocessor_config.json'}: AutoImageProcessor cannot load it: "
                        f"{error_text(e)}") from None
    loaded_class = type(processor).__name__.removesuffix("Pil").removesuffix("Fast")
    if loaded_class != case.processor_class:
        raise LoadError(f"{case.id}: {folder / 'preprocessor_config.json'}: field image_processor_type loads "
                        f"{type(processor).__name__}, the case declares {case.processor_class}")
    processors = {"default": processor}
    if compat.MAJOR >= 5:
        processors["pil"] = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil", trust_remote_code=False)
    auto = transformers.AutoModelForImageClassification if case.output == "logits" else transformers.AutoModel
    model = auto.from_pretrained(folder, trust_remote_code=False).eval()
    if type(model).__name__ != case.model_class:
        raise LoadError(f"{case.id}: {folder / 'config.json'}: {auto.__name__} loads {type(model).__name__}, "
                        f"the case declares {case.model_class}")
    pipe = (transformers.pipeline("image-classification", model=str(folder), trust_remote_code=False)
            if case.output == "logits" else None)
    return AsLoaded(config, processor, processors, model, pipe)
