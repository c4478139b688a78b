"""Convert original vision checkpoints to Hugging Face transformers, and back.

    import converters
    case = converters.get("convnextv2_atto_1k_224")
    hf_state, coverage = converters.convert(case, original_state)
    assert coverage.ok, coverage.describe()
    model = converters.build_model(case, hf_state)

Each family is one module in `converters/families/` declaring `FAMILY = Family.declared_in(globals(), ...)` (see
`converters/family.py`). This facade is lazy: `import converters` imports neither torch nor
transformers until a name below is used (the pytest plugin relies on it). Library modules never
import it back: they import from `converters.core`, `converters.registry` and the rest directly.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "core": ("build_config", "build_model", "target_layout", "original_layout", "convert", "revert", "plan_of",
             "synthetic_original", "load_original", "image_processor", "source_transform", "oracle"),
    # Never a submodule's name (`converters.family` is the module declaring `Family`): once the
    # submodule is imported, the package attribute is the module. `converters.families` is the
    # package of family modules; `converters.registry.families()` gives name -> Family.
    "registry": ("cases", "get", "get_family", "family_of", "family_names", "FamilyError"),
    "family": ("Family", "Small"),
    "case": ("Case",),
    "checkpoint": ("CheckpointError",),
    "plan": ("Coverage", "Plan"),
    "diagnose": ("layout_hint",),
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
