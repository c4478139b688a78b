"""`--push ORG` end to end, as a user runs it: the harness in a subprocess pushes through the real
huggingface_hub client over HTTP to the loopback Hub (fixtures/hub.py), and what it pushed comes
back with `snapshot_download` + `from_pretrained` with equal tensors. Failures: a server failing
mid-upload (local save intact, the printed command pushes it again), a rejected token and random
weights refused before any conversion work, a failed case never pushed. The token never appears
in output, the report or any saved file."""

from __future__ import annotations

from tests.support.hub import require_hub_client_1x

require_hub_client_1x()  # before the imports that differ in huggingface_hub 0.x

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from huggingface_hub import HfApi, snapshot_download
from safetensors.torch import load_file

import converters
from converters import compat
from tests.support.hub import hub_server  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
ORG = "vision-port-test"
ATTO, FEMTO, PICO = (converters.get(f"convnextv2_{size}_1k_224") for size in ("atto", "femto", "pico"))
CHECKS = (ROOT / "tests" / "test_conversions.py").read_text().count("\n@pytest.mark.check(")
# expected_logits skips on random weights, audit without --audit: the checks allowed to skip
SKIPPED = (ROOT / "tests" / "test_conversions.py").read_text().count("may_skip=True")
SAVED_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "validation.json", "README.md"}


def hub_env(tmp_path: Path, hub, token: str | None = None) -> dict:
    """The environment a user pushing to `hub` would have: endpoint and token from the environment
    (huggingface_hub reads both at import), no stored token (fresh HF_HOME), temporary files under
    tmp_path so a temporary save can be found."""
    (tmp_path / "tmp").mkdir(parents=True, exist_ok=True)
    return dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"), TMPDIR=str(tmp_path / "tmp"),
                HF_ENDPOINT=hub.endpoint, HF_TOKEN=token or hub.token, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")


def harness(tmp_path: Path, hub, *args: str, token: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conversions.py"), "-p", "no:cacheprovider", "-q", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=hub_env(tmp_path, hub, token), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_harness(tmp_path: Path, hub, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    process = harness(tmp_path, hub, *args, token=token)
    stdout, stderr = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def select(*cases) -> tuple[str, str]:
    return "-k", " or ".join(c.id for c in cases)


def checkpoint_file(tmp_path: Path, case, delete: str | None = None) -> str:
    """A synthetic original as a --checkpoint file (the harness treats it as real weights)."""
    state = converters.synthetic_original(case)
    if delete:
        del state[delete]
    path = tmp_path / f"{case.id}{'-broken' if delete else ''}.pt"
    torch.save({"model": state}, path)
    return f"{case.id}={path}"


def repo_id(case) -> str:
    return f"{ORG}/{case.hub_name}"


def assert_token_nowhere(token: str, *texts: str, folders=()) -> None:
    for i, text in enumerate(texts):
        assert token not in text, f"the token leaked into text #{i}"
    for folder in folders:
        for path in Path(folder).rglob("*"):
            assert not path.is_file() or token.encode() not in path.read_bytes(), f"the token leaked into {path}"


def assert_same_files(repo, folder: Path) -> None:
    assert set(repo.files) == SAVED_FILES | {".gitattributes"}
    for name in SAVED_FILES:
        assert repo.files[name] == (folder / name).read_bytes(), f"{repo.repo_id}: {name} differs from {folder / name}"


def test_push_publishes_each_passed_case_in_one_commit_and_never_a_failed_one(hub_server, tmp_path):
    hub = hub_server
    # A repo that already exists, with an earlier card: the push adds one commit on top.
    HfApi(endpoint=hub.endpoint, token=hub.token).upload_file(
        path_or_fileobj=b"# an earlier upload\n", path_in_repo="README.md", repo_id=hub.create_repo(repo_id(PICO)).repo_id)
    earlier = [c.oid for c in hub.repos[repo_id(PICO)].commits]
    sent_before = len(hub.requests)
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    # auto: atto and pico fall back to random weights; a --checkpoint file is real weights (refused with random)
    result = run_harness(tmp_path, hub, *select(ATTO, FEMTO, PICO), "--weights", "auto", "--allow-random-push",
                         "--push", ORG, "--save", str(out), "--report", str(report_path),
                         "--checkpoint", checkpoint_file(tmp_path, FEMTO, delete="stages.1.0.grn.gamma"))
    assert result.returncode == 1, result.stdout[-3000:]  # femto's checks fail
    report = json.loads(report_path.read_text())

    # The failed case: not saved, not pushed, never even asked about.
    assert report["cases"][FEMTO.id]["checks"]["key_coverage"]["status"] == "failed"
    assert report["pushed"][FEMTO.id].startswith("not pushed (not saved:")
    assert repo_id(FEMTO) not in hub.repos and not hub.requests_to(FEMTO.hub_name)

    # Each passed case: one commit holding the whole saved folder, named after the case and its result.
    sent = hub.requests[sent_before:]
    for case, commits_before in ((ATTO, ["initial commit"]), (PICO, earlier)):
        repo, folder = hub.repos[repo_id(case)], out / case.id
        assert [c.title if case is ATTO else c.oid for c in repo.commits[:-1]] == commits_before
        assert len([r for r in sent if r.method == "POST" and f"/api/models/{repo.repo_id}/commit/" in r.path]) == 1
        head = repo.head
        assert case.id in head.title and f"{CHECKS - SKIPPED} passed, {SKIPPED} skipped" in head.title and "random weights" in head.title, head.title
        assert "- logits: passed, max abs diff" in head.description
        assert_same_files(repo, folder)
        assert report["pushed"][case.id] == {"repo": repo.repo_id, "url": f"{hub.endpoint}/{repo.repo_id}", "commit": head.oid}
        assert f"{case.id} pushed to {hub.endpoint}/{repo.repo_id} (commit {head.oid[:12]})" in result.stdout
        assert report["saved"][case.id] == str(folder)
        assert f'repo = "{repo.repo_id}"' in (folder / "README.md").read_text()  # the card's snippet names where it went
    assert "not pushed (not saved" in result.stdout

    # Back from the endpoint: the same tensors, the same model, the same preprocessing.
    local = Path(snapshot_download(repo_id(ATTO), endpoint=hub.endpoint, local_dir=tmp_path / "download"))
    saved_tensors, pushed_tensors = load_file(out / ATTO.id / "model.safetensors"), load_file(local / "model.safetensors")
    assert saved_tensors.keys() == pushed_tensors.keys() and len(saved_tensors) > 50
    assert all(torch.equal(saved_tensors[k], pushed_tensors[k]) for k in saved_tensors)
    model_class = compat.get_class(ATTO.model_class)
    reference, downloaded = model_class.from_pretrained(out / ATTO.id), model_class.from_pretrained(local)
    reference_state, downloaded_state = reference.state_dict(), downloaded.state_dict()
    assert reference_state.keys() == downloaded_state.keys()
    assert all(torch.equal(reference_state[k], downloaded_state[k]) for k in reference_state)
    processor_class = type(converters.image_processor(ATTO))
    assert processor_class.from_pretrained(local).to_dict() == processor_class.from_pretrained(out / ATTO.id).to_dict()

    # The token was used (it came from HF_TOKEN) and went nowhere else.
    assert any(v == f"Bearer {hub.token}" for r in hub.requests for k, v in r.headers if k.lower() == "authorization")
    assert_token_nowhere(hub.token, result.stdout, result.stderr, report_path.read_text(), folders=[out])


def test_failed_push_keeps_the_save_and_prints_the_command_that_pushes_it_again(hub_server, tmp_path):
    """No --save: the push saves to a temporary directory. Atto pushes; femto's upload fails (the
    server answers its weights upload with 507); pico has random weights in auto mode and is
    refused at push time. Exit status 1: everything the checks decide passed, but a push asked
    for did not happen, and a script running `pytest --push` must not take it as published."""
    hub = hub_server
    hub.fail_after_puts = 1  # the first LFS upload (atto's weights) succeeds, the next fails
    report_path = tmp_path / "report.json"
    result = run_harness(tmp_path, hub, *select(ATTO, FEMTO, PICO), "--push", ORG, "--report", str(report_path),
                         "--checkpoint", checkpoint_file(tmp_path, ATTO), "--checkpoint", checkpoint_file(tmp_path, FEMTO))
    assert result.returncode == 1, result.stdout[-3000:]
    report = json.loads(report_path.read_text())
    statuses = {c["status"] for entry in report["cases"].values() for c in entry["checks"].values()}
    assert statuses == {"passed", "skipped"}  # no check failed: the exit status is the push's
    assert report["cases"][PICO.id]["weights"] == "random"

    pushed = report["pushed"]
    assert pushed[ATTO.id]["commit"] == hub.repos[repo_id(ATTO)].head.oid
    assert pushed[PICO.id].startswith("not pushed: random weights") and "--allow-random-push" in pushed[PICO.id]
    assert repo_id(PICO) not in hub.repos and not hub.requests_to(PICO.hub_name)
    failure = pushed[FEMTO.id]
    assert failure["repo"] == repo_id(FEMTO) and "507" in failure["error"]
    (temporary,) = (tmp_path / "tmp").glob("vision-port-push-*")
    folder = temporary / FEMTO.id
    assert f"The local save is intact: {folder}" in failure["error"]
    assert f"To push it again, run: {failure['retry']}" in failure["error"]
    assert f"{FEMTO.id} PUSH FAILED" in result.stdout and failure["retry"] in result.stdout

    # The femto repo was created, but no commit landed; the local save is complete; the temporary
    # saves of the pushed and the refused case are gone.
    assert [c.title for c in hub.repos[repo_id(FEMTO)].commits] == ["initial commit"]
    assert sorted(p.name for p in temporary.iterdir()) == [FEMTO.id]
    assert {p.name for p in folder.iterdir()} == SAVED_FILES
    assert json.loads((folder / "validation.json").read_text())["case"] == FEMTO.id

    # The printed command, run as printed (elsewhere, with the token from the environment), pushes it.
    hub.fail_after_puts = None
    retry = subprocess.run(failure["retry"], shell=True, cwd=tmp_path, env=hub_env(tmp_path, hub),
                           capture_output=True, text=True, timeout=300)
    assert retry.returncode == 0, retry.stderr[-3000:]
    repo = hub.repos[repo_id(FEMTO)]
    assert len(repo.commits) == 2 and FEMTO.id in repo.head.title
    assert_same_files(repo, folder)
    assert_token_nowhere(hub.token, result.stdout, result.stderr, retry.stdout, retry.stderr, report_path.read_text(),
                         folders=[tmp_path / "tmp"])


def test_push_refuses_random_weights_and_a_rejected_token_before_any_conversion_work(hub_server, tmp_path):
    hub = hub_server
    rejected = "hf_rejected_" + "x" * 24
    # Both runs at once: each stops in pytest_configure, so the cost is the imports.
    random_weights = harness(tmp_path / "a", hub, *select(ATTO), "--weights", "random", "--push", ORG)
    bad_token = harness(tmp_path / "b", hub, *select(ATTO), "--weights", "random", "--allow-random-push",
                        "--push", ORG, token=rejected)
    outputs = {}
    for name, process in (("random", random_weights), ("token", bad_token)):
        stdout, stderr = process.communicate(timeout=300)
        outputs[name] = (process.returncode, stdout, stderr)

    code, stdout, stderr = outputs["random"]
    assert code == 4 and "--allow-random-push" in stderr and "passed" not in stdout, stderr[-2000:]
    code, stdout, stderr = outputs["token"]
    assert code == 4 and f"--push {ORG}: the token could not be checked at {hub.endpoint}" in stderr, stderr[-2000:]
    assert "Invalid user token" in stderr and "passed" not in stdout
    assert rejected not in stdout + stderr
    # Only the token check reached the server (and the client's own daily fetch of its agent
    # registry, which it sends to whatever endpoint is configured); nothing created, nothing saved.
    assert [r.path for r in hub.requests if r.path != "/api/agent-harnesses"] == ["/api/whoami-v2"] and hub.repos == {}
    assert [p for d in ("a", "b") for p in (tmp_path / d / "tmp").iterdir()] == []


def test_a_server_that_echoes_the_token_never_gets_it_into_the_error(hub_server, tmp_path):
    """Teeth for the token checks above: this server quotes the Authorization header in its error,
    and the push error (what the session prints and reports) carries `<token>` in its place."""
    from converters import publish

    hub = hub_server
    hub.fail_commit, hub.echo_token = True, True
    folder = tmp_path / ATTO.id
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "validation.json").write_text(json.dumps({
        "case": ATTO.id, "model_class": ATTO.model_class, "original": {"weights": "pretrained", "source": "test"},
        "checks": {"logits": {"status": "passed", "max_abs_diff": 0.0, "atol": 1e-5}}}))
    try:
        publish.push(folder, repo_id(ATTO), token=hub.token, endpoint=hub.endpoint)
    except publish.PushError as e:
        error = e
    else:
        raise AssertionError("the push was meant to fail")
    assert "injected failure: commit" in str(error) and "Authorization: Bearer <token>" in str(error), str(error)
    assert hub.token not in str(error) and hub.token not in (error.retry or "")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "validation.json"]  # the folder is intact
