"""The as-loaded check has teeth: a saved folder whose preprocessor config has the wrong mean/std,
resample or crop, that loads another processor class, or that the Auto classes cannot load, fails
it naming the file and the field; the folder as saved passes."""

from __future__ import annotations

import json
import shutil

import pytest

import converters
from converters import checks
from vision_port_fixtures.images import photographs
from vision_port_fixtures.models import saved_synthetic


def _alterable(case) -> bool:
    """A processor each alteration below changes: ImageNet mean/std, bicubic, a crop_pct crop."""
    p = case.processor
    return p.get("resample") == 3 and p.get("image_mean") != [0.5, 0.5, 0.5] and "crop_pct" in p and p["crop_pct"] != 1.0


def _parameters(case) -> int:
    return sum(t.numel() for t in converters.original_layout(case.for_random_weights()).values())


# the cheapest such case of the registry (the families come and go: none is named here)
CASE = min((c for c in converters.cases() if _alterable(c) and "large" not in c.marks), key=_parameters)
PHOTOS = dict(list(photographs().items())[:2])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_synthetic(CASE, tmp_path_factory.mktemp("saved"))


def altered(saved, tmp_path, change) -> tuple:
    case, folder, oracle = saved
    copy = tmp_path / "altered"
    shutil.copytree(folder, copy)
    path = copy / "preprocessor_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    return case, copy, oracle


def run(case, folder, oracle):
    return checks.as_loaded(case, folder, oracle, converters.source_transform(case), PHOTOS)


def test_the_folder_as_saved_passes(saved):
    check = run(*saved)
    assert check.ok, check.message
    assert check.figures["default"]["grey_levels"] <= checks.DEFAULT_BACKEND_GREY_LEVELS


@pytest.mark.parametrize("name, change", [
    ("mean/std", lambda c: c.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])),
    ("resample", lambda c: c.update(resample=2)),  # bilinear for bicubic
    ("crop", lambda c: c.update(crop_pct=1.0) if "crop_pct" in c else c.update(crop_size={"height": 200, "width": 200})),
])
def test_a_wrong_preprocessor_setting_fails_beyond_the_measured_tolerance(saved, tmp_path, name, change):
    check = run(*altered(saved, tmp_path, change))
    assert not check.ok, f"{name}: {check.figures}"
    assert "grey levels from the original evaluation" in check.message or "pixel values" in check.message, check.message


def test_another_processor_class_is_named_with_the_file_and_field(saved, tmp_path):
    check = run(*altered(saved, tmp_path, lambda c: c.update(image_processor_type="ViTImageProcessor")))
    assert not check.ok and "preprocessor_config.json" in check.message and "image_processor_type" in check.message


def test_an_unloadable_preprocessor_config_is_named(saved, tmp_path):
    case, folder, oracle = saved
    copy = tmp_path / "broken"
    shutil.copytree(folder, copy)
    (copy / "preprocessor_config.json").write_text("{not json")
    check = run(case, copy, oracle)
    assert not check.ok and "preprocessor_config.json" in check.message, check.message
