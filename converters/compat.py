"""Every difference between transformers 4.x and 5.x that the converters depend on, in one place."""

from __future__ import annotations

import importlib
import pkgutil

import torch
import transformers

VERSION = transformers.__version__
MAJOR = int(VERSION.split(".")[0])  # the line: per-line plan entries (Plan.by_line) are keyed by it


class Unsupported(RuntimeError):
    """The installed transformers cannot run this case (e.g. a model removed in 5.x)."""


def _deprecated_module(name: str) -> str | None:
    """The module under transformers.models.deprecated that keeps class `name` (4.x keeps models it
    deprecated there, out of the top-level namespace; 5.x removed them), or None."""
    try:
        deprecated = importlib.import_module("transformers.models.deprecated")
    except ImportError:
        return None
    for found in pkgutil.iter_modules(deprecated.__path__):
        module = f"{deprecated.__name__}.{found.name}"
        if hasattr(importlib.import_module(module), name):
            return module
    return None


def get_class(name: str):
    """A transformers class by name, wherever this release keeps it."""
    if hasattr(transformers, name):
        return getattr(transformers, name)
    module = _deprecated_module(name)
    if module is None:
        raise Unsupported(f"{name} is not in transformers {transformers.__version__}")
    return getattr(importlib.import_module(module), name)


def image_processor_class(name: str):
    """The PIL implementation of an image processor: 5.x names it `<name>Pil` (the plain class is
    torchvision-based and differs from PIL by 1-2 grey levels); in 4.x the plain class is PIL."""
    if MAJOR >= 5 and hasattr(transformers, name + "Pil"):
        return getattr(transformers, name + "Pil")
    return get_class(name)


# Measured on 4.57.6 (scikit-image's camera, logo and palette GIF): these processors ignore
# do_convert_rgb and raise on grayscale, RGBA and palette images; 5.x converts them when
# do_convert_rgb is set (the cases set it). No 4.57 setting helps: users convert to RGB first.
_NO_RGB_CONVERSION_4X = ("ConvNextImageProcessor", "BeitImageProcessor")


def rejected_modes(processor_class: str) -> tuple[str, ...]:
    """PIL modes the installed transformers' image processor cannot take, whatever its config."""
    if MAJOR < 5 and processor_class in _NO_RGB_CONVERSION_4X:
        return ("L", "RGBA", "P")
    return ()


def is_pil_processor(processor) -> bool:
    """Is this image processor the PIL implementation (5.x: `...Pil`; 4.x: not `...Fast`)?"""
    name = type(processor).__name__
    return name.endswith("Pil") if MAJOR >= 5 else not name.endswith("Fast")


def module_of(name: str) -> str:
    """Where a transformers class is imported from: the top level, or the deprecated module that kept it."""
    return "transformers" if hasattr(transformers, name) else (_deprecated_module(name) or "transformers")


def auto_loadable(config_class: str) -> bool:
    """Do the Auto classes know this model? Not every deprecated one (measured on 4.57.6:
    ViT-hybrid's model type `vit-hybrid` is not a key of the Auto mapping, so AutoConfig raises):
    those are loaded by class."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        return get_class(config_class).model_type in CONFIG_MAPPING
    except Unsupported:
        return False


def unsupported(case) -> str | None:
    """Why the installed transformers cannot run `case` (its config, model or image processor
    class is missing), or None when it can. The harness turns the reason into a skip."""
    try:
        get_class(case.config_class)
        get_class(case.model_class)
        image_processor_class(case.processor_class)
    except Unsupported as e:
        from .registry import family_of

        return f"{case.id}: {e}; the family runs on transformers {', '.join(family_of(case).transformers_lines)}"
    return None


def set_config_dtype(config, dtype: torch.dtype) -> None:
    """The dtype a config records for its weights: 5.x calls the field `dtype`, 4.x `torch_dtype`."""
    setattr(config, "dtype" if MAJOR >= 5 else "torch_dtype", dtype)


def no_init_weights():
    """Skip random initialisation (every weight is overwritten by the conversion; 4.57's
    ViTHybrid `_init_weights` even crashes on its None mask_token)."""
    if MAJOR >= 5:
        from transformers.initialization import no_init_weights as ctx
    else:
        from transformers.modeling_utils import no_init_weights as ctx
    return ctx()


def build_model(class_name: str, config, device: str | torch.device = "cpu"):
    cls = get_class(class_name)
    with no_init_weights(), torch.device(device):
        model = cls(config)
    return model.eval()

