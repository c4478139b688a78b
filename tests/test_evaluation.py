"""The original evaluation declared as data (converters.evaluation): each resize rule builds the
transform the original code builds (compared with torchvision pipelines written here as the
originals write them), and a declaration that is not one is refused naming its source."""

from __future__ import annotations

import pytest
import torch
from torchvision import transforms

from converters.evaluation import Evaluation, TimmEvaluation, timm_evaluation
from vision_port_fixtures.images import photographs, synthetic_image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
BICUBIC, BILINEAR = transforms.InterpolationMode.BICUBIC, transforms.InterpolationMode.BILINEAR


def _images():
    found = {name: image for name, image in photographs().items() if name in ("chelsea", "astronaut")}
    return {**found, "synthetic_500x333": synthetic_image(500, 333), "synthetic_333x500": synthetic_image(333, 500)}


# (declaration, the original's pipeline as its code writes it)
RULES = {
    # dinov2/data/transforms.py make_classification_eval_transform: Resize(256) + CenterCrop(224)
    "shortest_edge": (
        Evaluation(source="test shortest_edge", crop_size=224, shortest_edge=256, mean=MEAN, std=STD),
        transforms.Compose([transforms.Resize(256, interpolation=BICUBIC), transforms.CenterCrop(224),
                            transforms.ToTensor(), transforms.Normalize(MEAN, STD)])),
    # beit/datasets.py build_transform: size = int(input_size / crop_pct), Resize(size) + CenterCrop
    "crop_pct": (
        Evaluation(source="test crop_pct", crop_size=224, crop_pct=0.9, interpolation="bilinear", mean=HALF, std=HALF),
        transforms.Compose([transforms.Resize(int(224 / 0.9), interpolation=BILINEAR), transforms.CenterCrop(224),
                            transforms.ToTensor(), transforms.Normalize(HALF, HALF)])),
    # ConvNeXt-V2 datasets.py build_transform at >= 384: Resize((384, 384)), no crop
    "warp": (
        Evaluation(source="test warp", crop_size=384, warp=True, mean=MEAN, std=STD),
        transforms.Compose([transforms.Resize((384, 384), interpolation=BICUBIC),
                            transforms.ToTensor(), transforms.Normalize(MEAN, STD)])),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_resize_rule_builds_the_originals_pipeline(rule):
    declared, original = RULES[rule]
    built = declared.transform()
    assert [type(t).__name__ for t in built.transforms] == [type(t).__name__ for t in original.transforms]
    for name, image in _images().items():
        ours, theirs = built(image.convert("RGB")), original(image.convert("RGB"))
        assert ours.shape == theirs.shape and torch.equal(ours, theirs), \
            f"{rule} on {name}: max abs diff {(ours - theirs).abs().max().item():.3g} > tolerance 0"


def test_crop_pct_rounds_as_the_originals_int():
    """int(224 / (224 / 256)) is 256 (BEiT, ConvNeXt); 224 / 0.9 floors to 248 (timm's math.floor)."""
    assert Evaluation(source="s", crop_size=224, crop_pct=224 / 256, mean=HALF, std=HALF).resize == 256
    assert Evaluation(source="s", crop_size=224, crop_pct=0.9, mean=HALF, std=HALF).resize == 248


def test_a_changed_declaration_changes_the_pixels():
    """The declaration is what the pixels come from: a wrong interpolation or crop_pct is visible."""
    image = photographs()["chelsea"]
    base = dict(source="s", crop_size=224, crop_pct=224 / 256, mean=HALF, std=HALF)
    right = Evaluation(**base).transform()(image)
    for wrong in (Evaluation(**{**base, "interpolation": "bilinear"}), Evaluation(**{**base, "crop_pct": 0.9})):
        assert (wrong.transform()(image) - right).abs().max().item() > 0.05, wrong


@pytest.mark.parametrize("fields, message", [
    (dict(crop_size=224), r"exactly one resize rule .*\(got none\)"),
    (dict(crop_size=224, shortest_edge=256, warp=True), r"exactly one resize rule .*\['shortest_edge', 'warp'\]"),
    (dict(crop_size=224, warp=True, interpolation="cubic"), r"interpolation 'cubic' is not one of"),
    (dict(crop_size=224, warp=True, std=(0.5, 0.5)), r"mean and std need 3 values"),
    (dict(crop_size=224, shortest_edge=200), r"crop_size 224 must be positive and no larger"),
    (dict(crop_size=224, crop_pct=1.5), r"crop_pct 1.5 is not in \(0, 1\]"),
    (dict(crop_size=224, warp=True, source=" "), r"source \(repository, file and function\) is empty"),
])
def test_a_declaration_that_is_not_one_is_refused_naming_its_source(fields, message):
    with pytest.raises(ValueError, match=message):
        Evaluation(**{"source": "org/repo eval.py build()", "mean": MEAN, "std": STD, **fields})


def test_timm_evaluation_is_timms_own_transform_of_the_tag():
    import timm
    from timm.data import create_transform, resolve_data_config

    from converters.case import Case

    case = Case(id="x", family="x", hub_name="x", url=None, config_class="", config={}, model_class="", output="",
                processor_class="", processor={}, timm_tag="resnet50.a1_in1k")
    declared = timm_evaluation(case)
    assert declared == TimmEvaluation("resnet50.a1_in1k") and "resnet50.a1_in1k" in declared.source
    expected = create_transform(**resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg("resnet50.a1_in1k").to_dict()))
    image = photographs()["chelsea"]
    assert repr(declared.transform()) == repr(expected) and torch.equal(declared.transform()(image), expected(image))
    with pytest.raises(ValueError, match="y: evaluation=timm_evaluation needs the case's timm_tag"):
        timm_evaluation(Case(**{**case.__dict__, "id": "y", "timm_tag": None}))


# A family of its own (outside the repository) that is an existing family with one case and its
# declared evaluation changed by `changes`: the pixel check must fail it, and pass the unchanged copy.
MUTANT = '''
import dataclasses
from converters.registry import _load

base = _load("{package}", "{family}")
case = next(c for c in base.cases if c.id == "{case_id}")
CASE = dataclasses.replace(case, id="{name}_case", family="{name}")
FAMILY = dataclasses.replace(base, name="{name}", cases=(CASE,), mutants=(),
                             evaluation=dataclasses.replace(base.evaluation_of(case), **{changes!r}))
'''


def test_a_wrong_declaration_fails_the_pixel_check(tmp_path):
    """Teeth: the pixel check compares the processor with what the declaration builds, so a
    declaration with the wrong interpolation or crop_pct fails it (the unchanged copy passes)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from converters import registry

    family, case = next((f, c) for f in registry.families().values() for c in f.cases
                        if isinstance(f.evaluation_of(c), Evaluation) and f.evaluation_of(c).crop_pct
                        and not c.pixel_divergence and not c.marks)
    package = family.plan.__module__.rpartition(".")[0]
    root = tmp_path / "evalmutants"
    root.mkdir()
    (root / "__init__.py").write_text("")
    variants = {"evalmut_same": {}, "evalmut_interp": {"interpolation": "bilinear"}, "evalmut_crop": {"crop_pct": 0.9}}
    for name, changes in variants.items():
        (root / f"{name}.py").write_text(MUTANT.format(package=package, family=family.name, case_id=case.id,
                                                       name=name, changes=changes))
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(tests.parent)]),
               VISION_PORT_FAMILIES="evalmutants")
    result = subprocess.run([sys.executable, "-m", "pytest", str(tests / "test_conversions.py"), "-q", "-rA", "-p",
                             "no:cacheprovider", "-p", "no:randomly", "--weights", "random", "-k", "evalmut and pixel_values"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout
    outcome = {name: [line.split()[0] for line in out.splitlines() if f"{name}_case" in line and
                      line.startswith(("PASSED", "FAILED", "ERROR", "XFAIL", "SKIPPED"))] for name in variants}
    assert outcome == {"evalmut_same": ["PASSED"], "evalmut_interp": ["FAILED"], "evalmut_crop": ["FAILED"]}, out[-4000:]
    for name in ("evalmut_interp", "evalmut_crop"):  # failed by the pixel check itself, naming the case
        assert f"{name}_case: pixel values" in out, out[-4000:]
