"""The audit of a hostile repo changes nothing: a folder made the way an attacker would publish it
(custom code behind `auto_map`, symlinks out of the folder, a FIFO or the zero device as a config,
a config sizing a model of many GB from a 1 KB file) gives findings, and the audit finishes: no code
of the repo runs, nothing outside the folder is read, nothing hangs or exhausts memory, and the
audit file meant for posting names a local folder by its base name only.

The probes that could hang, prompt or exhaust memory run the audit in a child process (this file run
as a script) under a timeout and an address-space limit, with stdin closed or answering `y`."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import converters
from converters import audit, compat
from fixtures.images import photographs
from fixtures.models import saved_synthetic

ROOT = Path(__file__).resolve().parents[1]
# A small case runnable here whose config sizes the model with a list of integers (depths, widths).
CASE = next(c for c in converters.cases() if "large" not in c.marks and not c.streamed and not compat.unsupported(c)
            and not c.pixel_divergence and not c.output_divergence
            and any(isinstance(v, list) and len(v) > 2 and all(type(x) is int for x in v) for v in c.config.values()))
SIZING = next(k for k, v in CASE.config.items() if isinstance(v, list) and len(v) > 2 and all(type(x) is int for x in v))
REPO = "tester/hostile"
SECRET = "hf_SECRETtoken0123456789"
PHOTOS = 2
# Address space for the child: an audit of the unaltered folder peaks at 4.2 GB of virtual memory
# here (tf5; torch's and OpenMP's reservations); a 10**9-label config or a 16 GB model goes far past.
ADDRESS_SPACE = 8 * 2**30
TIMEOUT = 300


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_synthetic(CASE, tmp_path_factory.mktemp("ours"))


def copy(saved, tmp_path: Path, name: str = "published") -> Path:
    folder = tmp_path / name
    shutil.copytree(saved[1], folder)
    return folder


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def run_child(saved, folder: Path, tmp_path: Path, repo: str = REPO, stdin: str = "", **env) -> dict:
    """The audit of `folder` in a child process (this file as a script): its result, or the test fails
    with what the child printed. `stdin` is written to the child and its stdin closed."""
    out = tmp_path / "child.json"
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                       HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
    try:
        child = subprocess.run([sys.executable, __file__, CASE.id, str(saved[1]), str(folder), repo, str(out)],
                               input=stdin, env=environment, capture_output=True, text=True, timeout=TIMEOUT,
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE)))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the audit of {folder} did not finish in {TIMEOUT} s: {(e.stdout or b'')[-2000:]!r} {(e.stderr or b'')[-2000:]!r}")
    assert child.returncode == 0 and out.is_file(), f"the audit of {folder} ended with {child.returncode}:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}"
    return json.loads(out.read_text())


def main(case_id: str, ours: str, published: str, repo: str, out: str) -> None:
    """The child: the audit of `published` against `ours` (saved by `saved_synthetic`), written to `out`."""
    case = converters.get(case_id).for_random_weights()
    oracle = converters.oracle(case, converters.synthetic_original(case))
    result = audit.audit(case, repo, audit.resolve(published), Path(ours), oracle, converters.source_transform(case),
                         dict(list(photographs().items())[:PHOTOS]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out).write_text(json.dumps({"verdicts": result.verdicts(), "report": result.as_dict(), "line": result.line(),
                                     "markdown": audit.markdown(result), "maxrss_kb": peak}))


# --------------------------------------------------------------------------- 1: the repo's code never runs

HOSTILE_CODE = """import pathlib
pathlib.Path({canary!r}).write_text("the repo's code ran")


class HostileConfig:
    pass


class HostileModel:
    pass


class HostileImageProcessor:
    pass
"""


def _custom_model(folder: Path) -> None:
    edit_json(folder / audit.CONFIG_FILE, lambda c: c.update(
        model_type="hostile_net", auto_map={"AutoConfig": "hostile.HostileConfig",
                                            "AutoModelForImageClassification": "hostile.HostileModel"}))


def _custom_processor(folder: Path) -> None:
    edit_json(folder / audit.PROCESSOR_FILE, lambda c: c.update(
        image_processor_type="HostileImageProcessor", auto_map={"AutoImageProcessor": "hostile.HostileImageProcessor"}))


@pytest.mark.parametrize("answer", ["", "y\n" * 5], ids=["stdin closed", "stdin answers y"])
@pytest.mark.parametrize("where", [_custom_model, _custom_processor], ids=["config.json", "preprocessor_config.json"])
def test_custom_code_is_a_finding_never_run_nor_prompted(saved, tmp_path, where, answer):
    folder, canary, modules = copy(saved, tmp_path), tmp_path / "canary", tmp_path / "modules"
    (folder / "hostile.py").write_text(HOSTILE_CODE.format(canary=str(canary)))
    where(folder)
    result = run_child(saved, folder, tmp_path, stdin=answer, HF_MODULES_CACHE=str(modules))
    assert not canary.exists(), "the repo's code ran"
    assert not list(modules.rglob("hostile*")), f"the repo's code was copied into the modules cache: {list(modules.rglob('*'))}"
    assert "wrong: custom code (auto_map)" in result["verdicts"], result["verdicts"]
    assert "[y/N]" not in result["markdown"]
    for finding in result["report"]["findings"]:  # whole sentences: never cut mid-word into `Pleas)`
        assert not finding["detail"].endswith(("Pleas)", "Pleas")), finding


# --------------------------------------------------------------------------- 2: nothing read out of the folder


def test_a_symlink_out_of_the_folder_is_refused_and_its_content_never_quoted(saved, tmp_path):
    folder = copy(saved, tmp_path)
    secret = tmp_path / "elsewhere" / "secrets.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"api_token": SECRET, "image_mean": [0.1, 0.2, 0.3], "crop_pct": 0.5}))
    (folder / audit.PROCESSOR_FILE).unlink()
    (folder / audit.PROCESSOR_FILE).symlink_to(secret)
    result = run_child(saved, folder, tmp_path)
    assert f"wrong: refused {audit.PROCESSOR_FILE}" in result["verdicts"], result["verdicts"]
    for written in (result["markdown"], json.dumps(result["report"]), result["line"]):
        assert SECRET not in written and "0.1, 0.2, 0.3" not in written and str(secret) not in written


def test_weights_symlinked_out_of_the_folder_are_refused_not_same(saved, tmp_path):
    folder = copy(saved, tmp_path)
    outside = tmp_path / "elsewhere" / "model.safetensors"
    outside.parent.mkdir()
    shutil.move(folder / "model.safetensors", outside)
    (folder / "model.safetensors").symlink_to(outside)
    result = run_child(saved, folder, tmp_path)
    weights = [f for f in result["report"]["findings"] if f["area"] == "weights"]
    assert [f["verdict"] for f in weights] == ["wrong: refused model.safetensors"], weights


def test_links_into_the_hub_caches_blobs_are_read(saved, tmp_path):
    """huggingface_hub's own layout (snapshots/<rev>/file -> ../../blobs/<hash>) is not refused."""
    repo = tmp_path / "models--tester--hostile"
    snapshot, blobs = repo / "snapshots" / "0123abcd", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for path in sorted(Path(saved[1]).iterdir()):
        shutil.copy(path, blobs / f"blob-{path.name}")
        (snapshot / path.name).symlink_to(Path("../../blobs") / f"blob-{path.name}")
    case, ours, oracle = saved
    result = audit.audit(case, REPO, audit.resolve(str(snapshot)), ours)
    assert result.ok, result.verdicts()


# --------------------------------------------------------------------------- 3: nothing hangs or exhausts memory


def test_a_fifo_config_is_refused_without_hanging(saved, tmp_path):
    folder = copy(saved, tmp_path)
    (folder / audit.CONFIG_FILE).unlink()
    os.mkfifo(folder / audit.CONFIG_FILE)
    result = run_child(saved, folder, tmp_path)
    assert f"wrong: refused {audit.CONFIG_FILE}" in result["verdicts"], result["verdicts"]


def test_the_zero_device_as_config_is_refused_within_memory(saved, tmp_path):
    folder = copy(saved, tmp_path)
    (folder / audit.CONFIG_FILE).unlink()
    (folder / audit.CONFIG_FILE).symlink_to("/dev/zero")
    result = run_child(saved, folder, tmp_path)
    assert f"wrong: refused {audit.CONFIG_FILE}" in result["verdicts"], result["verdicts"]


def test_a_config_of_many_megabytes_is_refused_unread(saved, tmp_path):
    folder = copy(saved, tmp_path)
    config = folder / audit.CONFIG_FILE
    config.write_text(config.read_text()[:-1] + ', "padding": "' + "x" * (audit.MAX_JSON_BYTES + 1) + '"}')
    case, ours, _ = saved
    result = audit.audit(case, REPO, audit.resolve(str(folder)), ours)
    refused = [f for f in result.findings if f.verdict == f"wrong: refused {audit.CONFIG_FILE}"]
    assert refused and f"{audit.MAX_JSON_BYTES}" in refused[0].detail, result.findings


def _no_label_names(c: dict) -> None:
    c.pop("id2label", None)
    c.pop("label2id", None)
    c["num_labels"] = 10**9


def _sized(c: dict) -> None:
    c[SIZING] = [*c[SIZING][:2], 20000, *c[SIZING][3:]]


@pytest.mark.parametrize("change, field", [(_no_label_names, "num_labels"), (_sized, SIZING)], ids=["num_labels 10**9", f"{SIZING} 20000"])
def test_a_config_sizing_a_huge_model_is_a_finding_and_nothing_is_built(saved, tmp_path, change, field):
    folder = copy(saved, tmp_path)
    edit_json(folder / audit.CONFIG_FILE, change)
    result = run_child(saved, folder, tmp_path)
    assert f"wrong: {field}" in result["verdicts"], result["verdicts"]
    report = result["report"]
    assert not [f for f in report["findings"] if f["area"] == "outputs"], report["findings"]  # no model was built
    assert any("not built" in note for note in report["notes"]), report["notes"]


def test_weights_far_smaller_than_the_config_implies_build_nothing(saved, tmp_path):
    """The published config agrees with the original's, but the weights hold one small tensor: a model
    of that config is never materialised (the check on the meta device comes first)."""
    from safetensors.torch import load_file, save_file

    folder = copy(saved, tmp_path)
    state = load_file(folder / "model.safetensors")
    smallest = min(state, key=lambda k: state[k].numel())
    save_file({smallest: state[smallest]}, folder / "model.safetensors", metadata={"format": "pt"})
    case, ours, oracle = saved
    result = audit.audit(case, REPO, audit.resolve(str(folder)), ours, oracle, converters.source_transform(case),
                         dict(list(photographs().items())[:PHOTOS]))
    assert "wrong: weights smaller than the config implies" in result.verdicts(), result.verdicts()
    assert not any(f.area == "outputs" for f in result.findings), result.findings


# --------------------------------------------------------------------------- 10: no local path in the audit file


def test_the_audit_file_names_a_local_folder_by_its_base_name(saved, tmp_path):
    """As the harness passes `--audit-repo CASE=DIR`: the repo is the folder's absolute path."""
    folder = copy(saved, tmp_path, "my-clone")
    _custom_processor(folder)  # transformers' refusal names the folder it read, twice
    case, ours, oracle = saved
    result = audit.audit(case, str(folder), audit.resolve(str(folder)), ours, oracle, converters.source_transform(case),
                         dict(list(photographs().items())[:PHOTOS]))
    text = audit.write(result, tmp_path / "out" / f"{case.id}.audit.md").read_text()
    assert str(tmp_path) not in text and "/tmp" not in text, text
    assert "`my-clone` (a local folder)" in text.splitlines()[0], text.splitlines()[0]
    assert "The repository my-clone contains custom code" in text, text


if __name__ == "__main__":
    main(*sys.argv[1:])
