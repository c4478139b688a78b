"""`converters.audit` and `--audit` have teeth: a folder saved from a synthetic original, then
altered one way each (resample, crop_pct removed, mean/std swapped, two tensors swapped,
layer_norm_eps, a key renamed), published on the loopback Hub and read back through it or through
a seeded huggingface_hub cache with the Hub gone (offline), is caught with the altered field or
tensor named and the right verdict; the unaltered folder is `same` everywhere. A missing, private,
gated or weightless repo is one line naming the repo and the reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants, snapshot_download
from safetensors.torch import load_file, save_file

import converters
from converters import audit, compat
from tests.support.hub import (
    hub_server,  # noqa: F401  (the fixture)
    require_hub_client_1x,
)
from vision_port_fixtures import options
from vision_port_fixtures.images import photographs
from vision_port_fixtures.models import saved_synthetic

ROOT = Path(__file__).resolve().parents[1]
# The first case of the registry that can show every alteration: a layer_norm_eps in its config and
# a crop_pct in its processor, small, runnable here, no known divergence from the original.
CASE = next(c for c in converters.cases() if "layer_norm_eps" in c.config and c.processor.get("crop_pct")
            and "large" not in c.marks and not c.streamed and not compat.unsupported(c)
            and not c.pixel_divergence and not c.output_divergence)
REPO = "tester/published"
PHOTOS = dict(list(photographs().items())[:2])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Our conversion of the synthetic original, saved as the harness saves it, and its oracle."""
    return saved_synthetic(CASE, tmp_path_factory.mktemp("ours"))


def _json_edit(name: str, change):
    def edit(folder: Path):
        path = folder / name
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return edit


def _weights_edit(change):
    def edit(folder: Path):
        path = folder / "model.safetensors"
        state = load_file(path)
        change(state)
        save_file(state, path, metadata={"format": "pt"})
    return edit


def same_shape_pair(state: dict) -> tuple[str, str]:
    """Two tensors of one shape whose values differ (a swap of them keeps every shape)."""
    keys = sorted(state)
    return next((a, b) for i, a in enumerate(keys) for b in keys[i + 1:]
                if state[a].shape == state[b].shape and state[a].ndim >= 2 and not torch.equal(state[a], state[b]))


def _swap(state: dict) -> None:
    a, b = same_shape_pair(state)
    state[a], state[b] = state[b], state[a]


def _rename(state: dict) -> None:
    key = sorted(state)[-1]
    state[key.replace(".", ".renamed_", 1)] = state.pop(key)


ALTERATIONS = {
    "unaltered": lambda folder: None,
    "resample": _json_edit(audit.PROCESSOR_FILE, lambda c: c.update(resample=2)),  # bilinear for bicubic
    "crop_pct_removed": _json_edit(audit.PROCESSOR_FILE, lambda c: c.pop("crop_pct")),
    "mean_std_swapped": _json_edit(audit.PROCESSOR_FILE, lambda c: c.update(image_mean=c["image_std"], image_std=c["image_mean"])),
    "tensor_swapped": _weights_edit(_swap),
    "layer_norm_eps": _json_edit(audit.CONFIG_FILE, lambda c: c.update(layer_norm_eps=1e-12)),
    "key_renamed": _weights_edit(_rename),
}


def altered(saved, tmp_path: Path, name: str) -> Path:
    _, folder, _ = saved
    copy = tmp_path / f"published-{name}"
    shutil.copytree(folder, copy)
    ALTERATIONS[name](copy)
    return copy


def publish(hub, folder: Path, repo_id: str = REPO, private: bool = False) -> None:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(repo_id, private=private)
    api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="conversion")


@pytest.fixture
def hub(hub_server):
    """The loopback Hub, for tests whose server and assertions follow huggingface_hub >= 1 (tf5);
    the others also run on 4.57.6's huggingface_hub 0.x."""
    require_hub_client_1x()
    return hub_server


@pytest.fixture(params=["hub", "cache"])
def served(request, hub, tmp_path, monkeypatch):
    """folder -> the folder `audit.resolve` gives for it: published on the loopback Hub, then read
    through the Hub ("hub") or from a huggingface_hub cache seeded by a download, with the Hub
    stopped and HF_HUB_OFFLINE=1 ("cache")."""
    cache = tmp_path / "hf-cache"

    def serve(folder: Path) -> Path:
        publish(hub, folder)
        if request.param == "hub":
            resolved = audit.resolve(REPO, endpoint=hub.endpoint, cache_dir=cache)
            assert hub.requests_to(f"/{REPO}/resolve/", "GET"), "nothing was downloaded from the Hub"
            return resolved
        snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache)  # seeds the cache
        hub.stop()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        return audit.resolve(REPO, endpoint=hub.endpoint, cache_dir=cache)

    serve.transport = request.param
    return serve


def run(saved, folder: Path) -> audit.Audit:
    case, ours, oracle = saved
    return audit.audit(case, REPO, folder, ours, oracle, converters.source_transform(case), PHOTOS)


def by_verdict(result: audit.Audit) -> dict[str, list[audit.Finding]]:
    found = {}
    for f in result.findings:
        found.setdefault(f.verdict, []).append(f)
    return found


def test_the_unaltered_folder_is_same_everywhere(saved, served, tmp_path):
    folder = served(altered(saved, tmp_path, "unaltered"))
    result = run(saved, folder)
    assert result.ok, result.verdicts()
    areas = {f.area for f in result.findings}
    assert areas == {"config", "weights", "preprocessor", "pixels", "outputs"}, areas
    pixel_paths = [f.subject for f in result.findings if f.area == "pixels"]
    assert len(pixel_paths) == (2 if compat.MAJOR >= 5 else 1), pixel_paths  # default backend, and PIL on 5.x
    assert "Every finding is `same`" in audit.markdown(result)


@pytest.mark.parametrize("name, expected", [
    ("resample", {"wrong: resample", "wrong: pixel values (resample)"}),
    ("mean_std_swapped", {"wrong: image_mean", "wrong: image_std", "wrong: pixel values (image_mean, image_std)"}),
    ("layer_norm_eps", {"wrong: layer_norm_eps"}),  # ~5e-7 in the logits at random weights: only the config says it
])
def test_a_field_set_otherwise_is_wrong_and_named(saved, served, tmp_path, name, expected):
    result = run(saved, served(altered(saved, tmp_path, name)))
    assert set(result.verdicts()) == expected, result.verdicts()
    assert all(v in audit.markdown(result) for v in expected)


def test_an_omitted_field_is_same_while_the_default_agrees_and_drift_when_it_moves(saved, served, tmp_path, monkeypatch):
    folder = served(altered(saved, tmp_path, "crop_pct_removed"))
    result = run(saved, folder)
    crop = [f for f in result.findings if f.subject == "crop_pct"]
    assert result.ok and len(crop) == 1 and "omitted" in crop[0].detail, result.findings
    # The next release moves the default (as #42934 moved ConvNeXt's resample): the file did not change.
    default = CASE.processor["crop_pct"]
    for cls in {compat.image_processor_class(CASE.processor_class), compat.get_class(CASE.processor_class)}:
        monkeypatch.setattr(cls, "crop_pct", 1.0 if default != 1.0 else 0.9)
    result = run(saved, folder)
    assert set(result.verdicts()) == {"drift: crop_pct"}, result.verdicts()
    assert sum(f.area == "pixels" for f in by_verdict(result)["drift: crop_pct"]) >= 1  # the pixels moved with it


def test_two_swapped_tensors_are_named_with_their_max_abs_diff(saved, served, tmp_path):
    a, b = same_shape_pair(load_file(saved[1] / "model.safetensors"))
    result = run(saved, served(altered(saved, tmp_path, "tensor_swapped")))
    weights = [f for f in result.findings if f.area == "weights"]
    assert len(weights) == 1 and weights[0].verdict in (f"wrong: tensor {a}, {b}", f"wrong: tensor {b}, {a}"), weights
    assert "2 of" in weights[0].detail and "max abs diff" in weights[0].detail
    assert "wrong: outputs" in result.verdicts()


def test_a_renamed_key_is_named_old_and_new(saved, served, tmp_path):
    key = sorted(load_file(saved[1] / "model.safetensors"))[-1]
    result = run(saved, served(altered(saved, tmp_path, "key_renamed")))
    weights = [f.verdict for f in result.findings if f.area == "weights"]
    assert weights == [f"wrong: key renamed {key} -> {key.replace('.', '.renamed_', 1)}"], weights


def test_a_tensor_of_another_shape_and_a_missing_preprocessor_config_are_findings_not_crashes(saved, tmp_path):
    folder = altered(saved, tmp_path, "unaltered")
    state = load_file(folder / "model.safetensors")
    key = max(state, key=lambda k: state[k].ndim)  # a conv kernel: one output channel fewer
    state[key] = state[key][:-1].clone()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / audit.PROCESSOR_FILE).unlink()
    result = run(saved, audit.resolve(str(folder)))
    verdicts = result.verdicts()
    assert f"wrong: shape {key}" in verdicts and f"wrong: no {audit.PROCESSOR_FILE}" in verdicts, verdicts
    assert "wrong: outputs" in verdicts and "wrong: as loaded" in verdicts, verdicts


def test_pickle_weights_are_audited_and_loaded_weights_only(saved, tmp_path):
    folder = altered(saved, tmp_path, "unaltered")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    result = run(saved, audit.resolve(str(folder)))
    assert result.ok, result.verdicts()
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    assert audit.load_weights(folder, REPO).keys() == state.keys()
    torch.save({**state, "extra": Unsafe()}, folder / "pytorch_model.bin")  # weights_only refuses the class
    with pytest.raises(audit.AuditError) as e:
        audit.load_weights(folder, REPO)
    assert str(e.value).startswith(f"{REPO}: ") and "Unsafe" in str(e.value), e.value


@pytest.mark.parametrize("formats", ["both", "pickle only"])
def test_pickle_weights_are_fetched_only_from_a_repo_without_safetensors(saved, hub, tmp_path, formats):
    """transformers reads pytorch_model.bin only where no safetensors exist: a repo holding both is
    not downloaded twice over."""
    folder = altered(saved, tmp_path, "unaltered")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    if formats == "pickle only":
        (folder / "model.safetensors").unlink()
    publish(hub, folder)
    resolved = audit.resolve(REPO, endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    fetched_pickle = bool(hub.requests_to("/pytorch_model.bin", "GET"))
    assert fetched_pickle == (formats == "pickle only"), [r.path for r in hub.requests_to("/resolve/")]
    assert [p.name for p in audit.weight_files(resolved)] == ["pytorch_model.bin" if fetched_pickle else "model.safetensors"]
    assert run(saved, resolved).ok


class Unsafe:
    """An object a pickle can carry and `torch.load(weights_only=True)` refuses to build."""


# --------------------------------------------------------------------------- bad input


def test_a_missing_repo_is_one_line_naming_it(hub, tmp_path):
    with pytest.raises(audit.AuditError) as e:
        audit.resolve("tester/no-such-repo", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert str(e.value).startswith("tester/no-such-repo: no such repo") and "\n" not in str(e.value)


def test_a_private_repo_without_a_token_is_named(saved, hub, tmp_path):
    publish(hub, saved[1], private=True)
    with pytest.raises(audit.AuditError) as e:
        audit.resolve(REPO, endpoint=hub.endpoint, token=False, cache_dir=tmp_path)
    assert str(e.value).startswith(f"{REPO}: ") and "private" in str(e.value) and "\n" not in str(e.value)
    assert audit.resolve(REPO, endpoint=hub.endpoint, token=hub.token, cache_dir=tmp_path).is_dir()


@pytest.mark.parametrize("with_token", [False, True], ids=["no token", "token without access"])
def test_a_gated_repo_is_named(saved, hub, tmp_path, with_token):
    publish(hub, saved[1])
    hub.repos[REPO].gated = True
    token = hub.token if with_token else False
    with pytest.raises(audit.AuditError) as e:
        audit.resolve(REPO, endpoint=hub.endpoint, token=token, cache_dir=tmp_path)
    assert str(e.value).startswith(f"{REPO}: gated") and "\n" not in str(e.value)
    assert hub.requests_to("/resolve/") and {r.status for r in hub.requests_to("/resolve/")} == {403 if with_token else 401}


def test_a_repo_without_weights_is_named(saved, hub, tmp_path):
    folder = altered(saved, tmp_path, "unaltered")
    (folder / "model.safetensors").unlink()
    publish(hub, folder)
    with pytest.raises(audit.AuditError) as e:
        audit.resolve(REPO, endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert str(e.value).startswith(f"{REPO}: holds no safetensors or pickle") and "config.json" in str(e.value)


def test_offline_without_a_cached_copy_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(audit.AuditError, match=f"^{REPO}: not in the huggingface_hub cache"):
        audit.resolve(REPO, cache_dir=tmp_path)


class _Config:
    def __init__(self, audit_repo, audit=False):
        self.values = {"audit_repo": audit_repo, "audit": audit}

    def getoption(self, name):
        return self.values[name]


@pytest.mark.parametrize("value, message", [
    ("nocase", "expected CASE=REPO_OR_DIR"),
    ("no_such_case=org/name", "no_such_case"),
    (f"{CASE.id}=./no/such/folder", "neither an existing folder nor a Hub repo id"),
    (f"{CASE.id}=just-a-name", "neither an existing folder nor a Hub repo id"),
])
def test_bad_audit_repo_values_are_usage_errors(value, message):
    with pytest.raises(pytest.UsageError, match=message):
        options._parse_audit(options.Options(), _Config([value]))


def test_audit_repo_implies_audit_and_a_case_is_given_once(tmp_path):
    opts = options.Options()
    options._parse_audit(opts, _Config([f"{CASE.id}={tmp_path}"]))
    assert opts.audit and opts.audit_repos == {CASE.id: str(tmp_path.resolve())}
    with pytest.raises(pytest.UsageError, match="already audited"):
        options._parse_audit(options.Options(), _Config([f"{CASE.id}=org/a", f"{CASE.id}=org/b"]))


# --------------------------------------------------------------------------- the harness


def test_the_harness_audits_each_case_writes_the_file_and_goes_on_past_a_bad_repo(saved, hub, tmp_path):
    """`--audit-repo` for two cases: a local folder (wrong: layer_norm_eps) and a repo the Hub does not
    have (one line); the summary, the report and <case>.audit.md next to the report say so."""
    other = next(c for c in converters.cases() if c.family == CASE.family and c.id != CASE.id and "large" not in c.marks)
    folder = altered(saved, tmp_path, "layer_norm_eps")
    report = tmp_path / "reports" / "report.json"
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"), HF_ENDPOINT=hub.endpoint,
               HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conversions.py"), "-q", "-p", "no:cacheprovider",
           "-p", "no:randomly", "-k", f"audit and ({CASE.id} or {other.id})", "--weights", "random", "--report", str(report),
           "--audit-repo", f"{CASE.id}={folder}", "--audit-repo", f"{other.id}=tester/missing"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    md = report.parent / f"{CASE.id}.audit.md"
    assert f"{CASE.id} audit of {folder}: " in result.stdout and "wrong: layer_norm_eps" in result.stdout, result.stdout[-3000:]
    assert f"{other.id} audit NOT DONE: tester/missing: no such repo" in result.stdout, result.stdout[-3000:]
    checks = json.loads(report.read_text())["cases"]
    ours = checks[CASE.id]["checks"]["audit"]
    assert ours["status"] == "failed" and ours["verdicts"] == ["wrong: layer_norm_eps"] and ours["audit_file"] == str(md)
    assert any(f["subject"] == "layer_norm_eps" for f in ours["findings"])
    assert "`wrong: layer_norm_eps`" in md.read_text()
    assert checks[other.id]["checks"]["audit"]["error"].startswith("tester/missing: no such repo")
    assert not (report.parent / f"{other.id}.audit.md").exists()


def test_a_failed_audit_does_not_block_the_save_of_a_conversion_that_passed():
    """The audit judges the published repo: its failure leaves `--save` of our conversion alone,
    while any other failed check still blocks it."""
    from converters.record import CheckResult
    from vision_port_fixtures.results import Results

    results = Results()
    for check, may_fail in (("logits", False), ("audit", True)):
        results.declare({"case": CASE.id, "check": check, "may_skip": may_fail, "may_fail": may_fail})
    entry = results.entry(CASE.id, CASE.family)
    entry.checks = {"logits": CheckResult("passed"), "audit": CheckResult("failed", may_fail=True)}
    assert results.publishable(CASE.id) is None
    entry.checks["logits"].status = "failed"
    assert results.publishable(CASE.id) == "not saved: logits failed"


def test_audit_and_push_save_and_push_a_passed_conversion_whose_audit_failed_and_never_a_failed_one(saved, hub, tmp_path):
    """`--audit --push`: save and push apply one policy (`converters.policy`, on the fields
    validation.json records). CASE's published repo is wrong (layer_norm_eps), its conversion passed:
    saved AND pushed. `other`'s audit fails too and so does its key coverage (a key deleted from its
    --checkpoint): neither saved nor pushed."""
    other = next(c for c in converters.cases() if c.family == CASE.family and c.id != CASE.id and "large" not in c.marks)
    folder = altered(saved, tmp_path, "layer_norm_eps")
    state = converters.synthetic_original(other)
    del state[sorted(state)[0]]
    checkpoint = tmp_path / f"{other.id}-broken.pt"
    torch.save({"model": state}, checkpoint)
    out, report = tmp_path / "out", tmp_path / "report.json"
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"), TMPDIR=str(tmp_path / "tmp"),
               HF_ENDPOINT=hub.endpoint, HF_TOKEN=hub.token, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")
    org = "vision-port-test"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conversions.py"), "-q", "-p", "no:cacheprovider",
           "-p", "no:randomly", "-k", f"{CASE.id} or {other.id}", "--weights", "auto", "--allow-random-push",
           "--push", org, "--save", str(out), "--report", str(report), "--checkpoint", f"{other.id}={checkpoint}",
           "--audit-repo", f"{CASE.id}={folder}", "--audit-repo", f"{other.id}=tester/missing"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]  # other's key coverage failed
    recorded = json.loads(report.read_text())
    ours = recorded["cases"][CASE.id]["checks"]
    assert ours["audit"]["status"] == "failed" and ours["audit"]["may_fail"] is True
    assert {n for n, r in ours.items() if r["status"] not in ("passed", "skipped")} == {"audit"}, ours
    assert recorded["saved"][CASE.id] == str(out / CASE.id), recorded["saved"]
    validation = json.loads((out / CASE.id / "validation.json").read_text())
    audit_row = next(line for line in (out / CASE.id / "README.md").read_text().splitlines() if line.startswith("| audit |"))
    assert audit_row.startswith("| audit | failed |"), audit_row
    assert "| judges another artefact, not this conversion: does not block the save; " in audit_row, audit_row
    assert validation["checks"]["audit"]["status"] == "failed" and validation["checks"]["audit"]["may_fail"] is True
    repo_id = f"{org}/{CASE.hub_name}"
    assert repo_id in hub.repos, recorded["pushed"][CASE.id]
    assert recorded["pushed"][CASE.id] == {"repo": repo_id, "url": f"{hub.endpoint}/{repo_id}",
                                           "commit": hub.repos[repo_id].head.oid}, recorded["pushed"]
    assert "PUSH FAILED" not in result.stdout, result.stdout[-3000:]

    theirs = recorded["cases"][other.id]["checks"]
    assert theirs["key_coverage"]["status"] == "failed" and theirs["audit"]["status"] == "failed"
    assert recorded["saved"][other.id].startswith("not saved: key_coverage failed"), recorded["saved"][other.id]
    assert "audit" not in recorded["saved"][other.id]  # the audit's failure is never a reason
    assert recorded["pushed"][other.id].startswith("not pushed (not saved:"), recorded["pushed"][other.id]
    assert not (out / other.id).exists() and f"{org}/{other.hub_name}" not in hub.repos


def test_omitted_fields_whose_installed_default_is_not_the_originals_are_drift(saved, tmp_path):
    """No simulation: the installed processor's own defaults (ConvNeXt's mean/std 0.5 against the
    original's ImageNet values, 4.57's bilinear resample) for whatever fields the case sets otherwise."""
    cls = compat.image_processor_class(CASE.processor_class)
    defaults, ours = (audit._plain(p.to_dict()) for p in (cls(), cls.from_pretrained(saved[1])))
    moved = sorted(k for k in ("image_mean", "image_std", "resample", "crop_pct") if k in ours and defaults.get(k) != ours[k])
    assert moved, "the installed defaults agree with the case everywhere: nothing to show here"
    folder = altered(saved, tmp_path, "unaltered")
    _json_edit(audit.PROCESSOR_FILE, lambda c: [c.pop(k) for k in moved])(folder)
    result = run(saved, audit.resolve(str(folder)))
    fields = {f.verdict for f in result.findings if f.area == "preprocessor"}
    assert fields == {f"drift: {k}" for k in moved}, fields
    assert {f.verdict for f in result.findings if f.area == "pixels"} == {f"drift: {', '.join(moved)}"}
