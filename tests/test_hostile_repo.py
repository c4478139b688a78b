"""The audit of a hostile repo changes nothing: a folder made the way an attacker would publish it
(custom code behind `auto_map`, symlinks out of the folder, a FIFO or the zero device as a config,
a config sizing a model of many GB from a 1 KB file) gives findings, and the audit finishes: no code
of the repo runs, nothing outside the folder is read, nothing hangs or exhausts memory, and the
audit file meant for posting names a local folder by its base name only.

The probes that could hang, prompt or exhaust memory are audited in a child process (this file run
as a script) under a timeout and an address-space limit: one child with stdin closed, one whose
stdin answers `y` to every question, each auditing every probe's folder in turn."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import converters
from converters import audit, compat
from vision_port_fixtures.images import photographs
from vision_port_fixtures.models import saved_synthetic

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
PROBE_TIMEOUT = 120  # one probe's audit (they take seconds): on the unfixed audit the FIFO hung until killed
TIMEOUT = 900  # every probe of one child
STDIN = {"stdin closed": "", "stdin answers y": "y\n" * 100}


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _replace(folder: Path, name: str, by) -> None:
    (folder / name).unlink()
    by(folder / name)


# --------------------------------------------------------------------------- the probes: hostile folders

HOSTILE_CODE = """import pathlib
pathlib.Path({canary!r}).write_text("the repo's code ran")


class HostileConfig:
    pass


class HostileModel:
    pass


class HostileImageProcessor:
    pass
"""


def custom_model(folder: Path) -> None:
    edit_json(folder / audit.CONFIG_FILE, lambda c: c.update(
        model_type="hostile_net", auto_map={"AutoConfig": "hostile.HostileConfig",
                                            "AutoModelForImageClassification": "hostile.HostileModel"}))


def custom_processor(folder: Path) -> None:
    edit_json(folder / audit.PROCESSOR_FILE, lambda c: c.update(
        image_processor_type="HostileImageProcessor", auto_map={"AutoImageProcessor": "hostile.HostileImageProcessor"}))


def secret_processor(folder: Path) -> None:
    secret = folder.parent / f"{folder.name}-secrets.json"
    secret.write_text(json.dumps({"api_token": SECRET, "image_mean": [0.1, 0.2, 0.3], "crop_pct": 0.5}))
    _replace(folder, audit.PROCESSOR_FILE, lambda path: path.symlink_to(secret))


def weights_outside(folder: Path) -> None:
    outside = folder.parent / f"{folder.name}-model.safetensors"
    shutil.move(folder / "model.safetensors", outside)
    (folder / "model.safetensors").symlink_to(outside)


def fifo_config(folder: Path) -> None:
    _replace(folder, audit.CONFIG_FILE, os.mkfifo)


def zero_config(folder: Path) -> None:
    _replace(folder, audit.CONFIG_FILE, lambda path: path.symlink_to("/dev/zero"))


def no_label_names(folder: Path) -> None:
    def change(c):
        c.pop("id2label", None)
        c.pop("label2id", None)
        c["num_labels"] = 10**9
    edit_json(folder / audit.CONFIG_FILE, change)


def sized(folder: Path) -> None:
    edit_json(folder / audit.CONFIG_FILE, lambda c: c.update({SIZING: [*c[SIZING][:2], 20000, *c[SIZING][3:]]}))


PROBES = {f.__name__: f for f in (custom_model, custom_processor, secret_processor, weights_outside, fifo_config,
                                  zero_config, no_label_names, sized)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_synthetic(CASE, tmp_path_factory.mktemp("ours"))


def copy(saved, parent: Path, name: str) -> Path:
    folder = parent / name
    shutil.copytree(saved[1], folder)
    (folder / "hostile.py").write_text(HOSTILE_CODE.format(canary=str(parent / f"{name}-canary")))
    return folder


@pytest.fixture(scope="module", params=list(STDIN))
def audited(request, saved, tmp_path_factory):
    """(results by probe, the folder of the probes, the modules cache): every probe's folder audited
    in one child process, whose stdin is closed or answers `y`, with HF_MODULES_CACHE its own."""
    parent = tmp_path_factory.mktemp("probes")
    folders = []
    for name, make in PROBES.items():
        folders.append(copy(saved, parent, name))
        make(folders[-1])
    modules, out = parent / "modules", parent / "results"
    out.mkdir()
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                       HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(modules))
    try:
        child = subprocess.run([sys.executable, __file__, CASE.id, str(saved[1]), str(out), *map(str, folders)],
                               input=STDIN[request.param], env=environment, capture_output=True, text=True, timeout=TIMEOUT,
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE)))
    except subprocess.TimeoutExpired as e:
        done = sorted(p.stem for p in out.iterdir())
        pytest.fail(f"the audits did not finish in {TIMEOUT} s (finished: {done}): {(e.stderr or b'')[-2000:]!r}")
    assert child.returncode == 0, f"the child ended with {child.returncode}:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}"
    return {p.stem: json.loads(p.read_text()) for p in out.iterdir()}, parent, modules


def main(case_id: str, ours: str, out: str, *published: str) -> None:
    """The child: the audit of each `published` folder against `ours` (saved by `saved_synthetic`),
    written to `out`/<folder name>.json, or the error it ended with."""
    case = converters.get(case_id).for_random_weights()
    oracle = converters.oracle(case, converters.synthetic_original(case))

    def hung(signum, frame):  # interrupts a blocking read (PEP 475: not retried when the handler raises)
        raise TimeoutError(f"hung: not finished in {PROBE_TIMEOUT} s")

    signal.signal(signal.SIGALRM, hung)
    for folder in map(Path, published):
        signal.alarm(PROBE_TIMEOUT)
        try:
            result = audit.audit(case, str(folder), audit.resolve(str(folder)), Path(ours), oracle,
                                 converters.source_transform(case), dict(list(photographs().items())[:PHOTOS]))
            done = {"verdicts": result.verdicts(), "report": result.as_dict(), "line": result.line(),
                    "markdown": audit.markdown(result)}
        except BaseException as e:  # hung, MemoryError under the limit, or anything else: the probe's test says it
            done = {"error": "".join(traceback.format_exception_only(e)) + traceback.format_exc()[-3000:]}
        finally:
            signal.alarm(0)
        (Path(out) / f"{folder.name}.json").write_text(json.dumps(done))


def result_of(audited, probe: str) -> dict:
    results = audited[0]
    assert probe in results, f"{probe} was not audited: {sorted(results)}"
    assert "error" not in results[probe], f"the audit of {probe} ended with {results[probe]['error']}"
    return results[probe]


# --------------------------------------------------------------------------- 1: the repo's code never runs


@pytest.mark.parametrize("probe", ["custom_model", "custom_processor"])
def test_custom_code_is_a_finding_never_run_nor_prompted(audited, probe):
    _, parent, modules = audited
    assert not (parent / f"{probe}-canary").exists(), "the repo's code ran"
    assert not list(modules.rglob("hostile*")), f"the repo's code was copied into the modules cache: {list(modules.rglob('*'))}"
    result = result_of(audited, probe)
    assert "wrong: custom code (auto_map)" in result["verdicts"], result["verdicts"]
    for finding in result["report"]["findings"]:  # quoted whole, not cut at 300 characters into `Pleas)`
        assert "trust_remote_code=)" not in finding["detail"] and not finding["detail"].endswith("Pleas)"), finding


# --------------------------------------------------------------------------- 2: nothing read out of the folder


def test_a_symlink_out_of_the_folder_is_refused_and_its_content_never_quoted(audited):
    result = result_of(audited, "secret_processor")
    assert f"wrong: refused {audit.PROCESSOR_FILE}" in result["verdicts"], result["verdicts"]
    for written in (result["markdown"], json.dumps(result["report"]), result["line"]):
        assert SECRET not in written and "0.1, 0.2, 0.3" not in written and "secrets.json" not in written


def test_weights_symlinked_out_of_the_folder_are_refused_not_same(audited):
    weights = [f for f in result_of(audited, "weights_outside")["report"]["findings"] if f["area"] == "weights"]
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


@pytest.mark.parametrize("probe", ["fifo_config", "zero_config"])
def test_a_fifo_or_the_zero_device_as_config_is_refused_unread(audited, probe):
    result = result_of(audited, probe)
    assert f"wrong: refused {audit.CONFIG_FILE}" in result["verdicts"], result["verdicts"]


def test_a_config_of_many_megabytes_is_refused_unread(saved, tmp_path):
    folder = tmp_path / "published"
    shutil.copytree(saved[1], folder)
    config = folder / audit.CONFIG_FILE
    config.write_text(config.read_text()[:-1] + ', "padding": "' + "x" * (audit.MAX_JSON_BYTES + 1) + '"}')
    case, ours, _ = saved
    result = audit.audit(case, REPO, audit.resolve(str(folder)), ours)
    refused = [f for f in result.findings if f.verdict == f"wrong: refused {audit.CONFIG_FILE}"]
    assert refused and f"{audit.MAX_JSON_BYTES}" in refused[0].detail, result.findings


@pytest.mark.parametrize("probe, field", [("no_label_names", "num_labels"), ("sized", SIZING)])
def test_a_config_sizing_a_huge_model_is_a_finding_and_nothing_is_built(audited, probe, field):
    result = result_of(audited, probe)
    assert f"wrong: {field}" in result["verdicts"], result["verdicts"]
    report = result["report"]
    assert not [f for f in report["findings"] if f["area"] == "outputs"], report["findings"]  # no model was built
    assert any("not built" in note for note in report["notes"]), report["notes"]


def test_weights_far_smaller_than_the_config_implies_build_nothing(saved, tmp_path):
    """The published config agrees with the original's, but the weights hold one small tensor: a model
    of that config is never materialised (the check on the meta device comes first)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "published"
    shutil.copytree(saved[1], folder)
    state = load_file(folder / "model.safetensors")
    smallest = min(state, key=lambda k: state[k].numel())
    save_file({smallest: state[smallest]}, folder / "model.safetensors", metadata={"format": "pt"})
    case, ours, oracle = saved
    result = audit.audit(case, REPO, audit.resolve(str(folder)), ours, oracle, converters.source_transform(case),
                         dict(list(photographs().items())[:PHOTOS]))
    assert "wrong: weights smaller than the config implies" in result.verdicts(), result.verdicts()
    assert not any(f.area == "outputs" for f in result.findings), result.findings


# --------------------------------------------------------------------------- 10: no local path in the audit file


def test_the_audit_file_names_a_local_folder_by_its_base_name(audited, tmp_path):
    """As the harness passes `--audit-repo CASE=DIR`: the repo is the folder's absolute path, and
    transformers' refusal of the custom processor names the folder it read, twice."""
    _, parent, _ = audited
    result = result_of(audited, "custom_processor")
    text = result["markdown"]
    assert str(parent) not in text and "/tmp" not in text, text
    assert "`custom_processor` (a local folder)" in text.splitlines()[0], text.splitlines()[0]
    assert "The repository custom_processor contains custom code" in text, text


if __name__ == "__main__":
    main(*sys.argv[1:])
