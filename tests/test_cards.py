"""Model cards: every case's card, built from a synthetic validation record (no conversion), parses
back with huggingface_hub into card data with licence, datasets, tags, task, library, model-index
results; licences are Hub ids; non-commercial terms come first; provenance is complete or the
registry refuses the family; --push of a family without a licence is refused at collection."""

from __future__ import annotations

import sys
import uuid

import pytest
from huggingface_hub import ModelCard

import converters
from converters import cards, registry
from converters.licences import HUB_LICENCES
from vision_port_fixtures import options

CASES = registry.cases()
SHA = "ab" * 32
IMAGES = ["synthetic_640x480", "synthetic_480x640", "synthetic_500x333"]


def validation(case, weights: str = "pretrained") -> dict:
    """What fixtures/outputs.validation_record gives a case whose checks passed (figures invented)."""
    passed = dict(status="passed", max_abs_diff=0.0, atol=0.0, reason=None)
    checks = {"key_coverage": dict(passed, max_abs_diff=None, atol=None), "pixel_values": passed,
              "logits": dict(passed, max_abs_diff=1.5e-6, atol=case.atol, cosine_similarity=1.0, top5_agreement=1.0),
              "expected_logits": dict(status="skipped", max_abs_diff=None, atol=None, reason="COCO image not cached"),
              "round_trip": passed, "save_reload": passed}
    urls = {None: case.url or f"https://huggingface.co/timm/{case.timm_tag}", **case.extra_files}
    files = [{"part": part, "source": url, "path": f"/home/someone/.cache/{part or 'main'}-{case.id}.pth", "sha256": SHA}
             for part, url in urls.items()]
    original = {"weights": weights, "source": urls[None] if weights == "pretrained" else f"synthetic (seed {case.seed})",
                "path": files[0]["path"], "sha256": SHA, "notes": [], "files": files if weights == "pretrained" else []}
    return {"case": case.id, "family": case.family, "model_class": case.model_class, "output": case.output,
            "hub_name": case.hub_name, "checks": checks, "versions": {"python": "3.11.9", "torch": "2.14.1"},
            "saved_at": "2026-12-02T00:00:00Z", "original": original, "images": IMAGES, "url": case.url}


def card_text(case, weights: str = "pretrained") -> str:
    return str(cards.model_card(case, validation(case, weights)))


def first_paragraph(text: str) -> str:
    """The card's first paragraph of prose: after the metadata and the title, not a warning block."""
    body = text.split("\n---\n", 1)[1]
    blocks = [b.strip() for b in body.split("\n\n") if b.strip()]
    return next(b for b in blocks if not b.startswith(("#", ">")))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_card_parses_back_with_its_provenance(case, tmp_path):
    provenance = registry.family_of(case).provenance_of(case)
    path = tmp_path / "README.md"
    cards.model_card(case, validation(case)).save(path)
    card = ModelCard.load(path)
    data = card.data
    assert data.license == provenance.licence in HUB_LICENCES
    if provenance.licence == "other":
        assert (data.license_name, data.license_link) == (provenance.licence_name, provenance.licence_link)
    assert data.library_name == "transformers" and data.pipeline_tag in ("image-classification", "image-feature-extraction")
    assert {"vision", data.pipeline_tag, case.family} <= set(data.tags)
    # Hub dataset ids where the data is on the Hub; data the Hub has no dataset of is named in the text
    assert (data.datasets or []) == list(provenance.datasets) and (provenance.datasets or provenance.unlisted_data)
    assert all(name in card.text for name in provenance.unlisted_data)
    assert data.base_model == provenance.base_model
    # model-index: the passed checks' figures, on the images they were measured on
    results = {(r.metric_type, r.metric_name.split(":")[0]): r for r in data.eval_results}
    assert data.model_name == case.hub_name and results[("max_abs_diff", "logits")].metric_value == 1.5e-6
    assert results[("top5_agreement", "logits")].metric_value == 1.0 and ("max_abs_diff", "expected_logits") not in results
    assert all(r.task_type == data.pipeline_tag and r.verified is False for r in data.eval_results)
    # The text: weights by file name, URL and sha256 (never the local path), terms, usage, citation
    text = card.text
    assert f"| main-{case.id}.pth |" in text and f"`{SHA}`" in text and "/home/someone" not in text
    assert f"`{case.url or 'https://huggingface.co/' + provenance.base_model}`" in text
    assert provenance.licence_statement in text and provenance.licence_source in text
    assert f'"ORG/{case.hub_name}"' in text and ".from_pretrained(repo)" in text
    assert ('backend="pil"' in text) == (">=5,<6" in registry.family_of(case).transformers_lines)
    for arxiv, title in provenance.papers.items():
        assert f"{title}, [arXiv:{arxiv}](https://arxiv.org/abs/{arxiv})" in text
    assert "Random weights" not in text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_terms_come_first_and_divergences_near_the_top(case):
    provenance = registry.family_of(case).provenance_of(case)
    text = card_text(case)
    first = first_paragraph(text)
    assert provenance.licence_statement in first
    assert ("Non-commercial use only" in first) == provenance.non_commercial
    head = text[: text.index("## Original weights")]
    for divergence in (case.pixel_divergence, case.output_divergence):
        assert divergence is None or divergence in head


def test_non_commercial_families_are_the_ones_the_originals_say():
    noncommercial = {name for name, f in registry.families().items() if f.provenance.non_commercial}
    assert noncommercial == {"convnextv2", "regnet_seer", "data2vec_vision"}
    seer = registry.get_family("regnet_seer").provenance
    assert (seer.licence, seer.licence_name) == ("other", "seer-license") and seer.licence_link.endswith("MODEL_LICENSE.md")


def test_case_overrides_reach_the_card():
    data = {c: ModelCard(card_text(converters.get(c))).data for c in
            ("convnextv2_atto_1k_224", "convnextv2_tiny_22k_224", "dinov2_vits14", "dinov2_vits14_linear", "resnet26")}
    assert data["convnextv2_atto_1k_224"].datasets == ["imagenet-1k"]
    assert data["convnextv2_tiny_22k_224"].datasets == ["imagenet-21k", "imagenet-1k"]
    assert data["dinov2_vits14"].datasets is None and data["dinov2_vits14_linear"].datasets == ["imagenet-1k"]
    assert data["resnet26"].base_model == "timm/resnet26.bt_in1k"
    assert "arxiv.org/abs/2309.16588" in card_text(converters.get("dinov2_vits14_reg4"))
    assert "arxiv.org/abs/1812.01187" in card_text(converters.get("resnet26"))


def test_a_local_checkpoint_is_named_by_its_file_never_its_path():
    case = converters.get("convnextv2_atto_1k_224")
    record = validation(case)
    record["original"]["source"] = record["original"]["files"][0]["source"] = "/home/someone/ckpt/atto_ema.pt"
    text = str(cards.model_card(case, record))
    assert "`atto_ema.pt`" in text and "/home/someone" not in text
    assert f"| main-{case.id}.pth | a local file, not fetched from `{case.url}` |" in text  # not "published at"


def test_random_weight_card_keeps_its_warning_at_the_top():
    case = converters.get("data2vec_vision_base")
    text = card_text(case, weights="random")
    body = text.split("\n---\n", 1)[1]
    assert body.index("> **Random weights.**") < body.index("**Non-commercial use only.**") < body.index("## Original weights")
    assert "random tensors in the original layout" in text and f"`{case.url}`" in text
    assert "/home/someone" not in text


# --------------------------------------------------------------------------- bad input: a user's family

FAMILY_MODULE = '''
from converters.case import Case
from converters.evaluation import Evaluation
from converters.family import Family, Provenance
CASE = Case(id="{case_id}", family="fake", hub_name="fake-tiny", url="https://example.invalid/fake.pt",
            config_class="ConvNextV2Config", config={{}}, model_class="ConvNextV2ForImageClassification",
            output="logits", processor_class="ConvNextImageProcessor", processor={{}}, provenance={case_override})
FAMILY = Family(name="fake", cases=(CASE,), plan=None, original_layout=None, oracle=None, configurations=None,
                provenance={provenance}, evaluation=Evaluation(source="x/y eval.py build()", crop_size=224,
                                                                shortest_edge=256, mean=(0.5,) * 3, std=(0.5,) * 3))
'''
GOOD = ("Provenance(licence='mit', licence_statement='MIT.', licence_source='x/y LICENSE', "
        "repository='https://example.invalid/y', papers={'2301.00808': 'A paper'}, datasets=('imagenet-1k',))")


def fake_family(tmp_path, monkeypatch, provenance: str, case_override: str = "{}") -> str:
    """A family package outside the repository, named by $VISION_PORT_FAMILIES; returns its case id."""
    package = f"userfamilies_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    case_id = f"fake_{package}"
    (tmp_path / package / "fake.py").write_text(
        FAMILY_MODULE.format(case_id=case_id, provenance=provenance, case_override=case_override))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.EXTRA_ENV, package)
    return case_id


def test_a_family_of_complete_provenance_loads(tmp_path, monkeypatch):
    case_id = fake_family(tmp_path, monkeypatch, GOOD)
    assert registry.family_of(converters.get(case_id)).provenance.licence == "mit"


def test_unknown_licence_id_is_refused_naming_family_and_id(tmp_path, monkeypatch):
    fake_family(tmp_path, monkeypatch, GOOD.replace("'mit'", "'apache-3.0'"))
    with pytest.raises(registry.FamilyError, match=r"family 'fake'.*licence 'apache-3.0' is not a Hub licence id"):
        registry.families()


@pytest.mark.parametrize("provenance, override, field", [
    (GOOD.replace("licence_source='x/y LICENSE', ", ""), "{}", "licence_source"),
    (GOOD.replace("papers={'2301.00808': 'A paper'}, ", ""), "{}", "papers"),
    (GOOD, "{'datasets': ()}", "datasets"),  # a case override that empties a field
    (GOOD.replace("'mit'", "'other'"), "{}", "licence_name, licence_link"),
])
def test_missing_provenance_field_fails_naming_family_and_field(tmp_path, monkeypatch, provenance, override, field):
    fake_family(tmp_path, monkeypatch, provenance, override)
    with pytest.raises(registry.FamilyError, match=rf"family 'fake'.*case 'fake_\w+'.*not set: {field}"):
        registry.families()


def test_unknown_case_override_field_is_refused(tmp_path, monkeypatch):
    fake_family(tmp_path, monkeypatch, GOOD, "{'licence_url': 'x'}")
    with pytest.raises(registry.FamilyError, match=r"family 'fake'.*unknown provenance field\(s\) \['licence_url'\]"):
        registry.families()


def test_push_of_a_family_without_licence_is_refused_at_collection(tmp_path, monkeypatch):
    """The check the plugin runs at collection finish (fixtures/plugin.py), before any test (so any
    conversion) runs; a family without provenance still gets a card that says so."""
    case_id = fake_family(tmp_path, monkeypatch, "None")
    case = converters.get(case_id)
    licensed = converters.get("convnextv2_atto_1k_224")
    options.check_push_licences(options.Options(push="org"), [licensed])  # declared: no refusal
    with pytest.raises(pytest.UsageError, match=rf"--push org: family fake declares no licence .* for {case_id}"):
        options.check_push_licences(options.Options(push="org"), [licensed, case])
    card = ModelCard(card_text(case))
    assert card.data.license == "unknown" and first_paragraph(str(card)).startswith("**Licence not declared**")
    assert sys.modules[f"{registry.packages()[1]}.fake"].FAMILY.provenance is None
