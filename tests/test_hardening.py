"""Hardening of what a session leaves behind (the bad-input and unwritable-directory parts are in
test_bad_input.py and test_session.py): a save killed with SIGKILL at any point leaves no partial
output and an earlier output intact; `-n 2` saves (and pushes) each passed case exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import converters
from tests.support.hub import hub_server  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
ATTO, FEMTO, PICO = (converters.get(f"convnextv2_{size}_1k_224") for size in ("atto", "femto", "pico"))

# A process that saves a case exactly as the harness does (the save/reload check stages the model
# and processor with `save.stage`, session finish completes the folder with `save.finish_save`:
# validation.json, the card, the rename into place), once per request, each time in a forked child that is killed at the requested point:
# "none", "after:<seconds>" (SIGKILL from outside, mid-whatever), or "<os function>:<n>" (the child
# SIGKILLs itself at that call, e.g. just before the final rename). Imports and the model are paid
# for once; the first save (unkilled) is the reference and the "earlier output".
SAVER = r"""
import json, os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)  # the forked children must not need a thread pool (it does not survive fork)
import converters
from converters import atomic, save

case = converters.get(sys.argv[1])
model = converters.build_model(case, converters.convert(case, converters.synthetic_original(case))[0])
processor = converters.image_processor(case)
validation = {"case": case.id, "family": case.family, "model_class": case.model_class, "output": case.output,
              "hub_name": case.hub_name, "images": ["synthetic"], "versions": {"torch": torch.__version__},
              "original": {"weights": "random", "source": "synthetic"},
              "checks": {"logits": {"status": "passed", "max_abs_diff": 0.0, "atol": 1e-5}}}

def save_case(out):  # the harness's own two steps: the save/reload check stages, session finish completes
    staging = atomic.staging_dir(out, case.id)
    save.stage(case, staging, processor, model=model)
    save.finish_save(case, staging, out / case.id, validation)

def die_at(name, n):
    real, calls = getattr(os, name), [0]
    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(os, name, dying)

def reap(pid, limit=60.0):
    # The child's wait status, or None when it hung: a forked child can deadlock on a lock another
    # thread of this process held at fork time (seen once here); it is then killed and forked again.
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None

def attempt(out, point):
    pid = os.fork()
    if pid == 0:
        try:
            if ":" in point and not point.startswith("after:"):
                name, n = point.split(":")
                die_at(name, int(n))
            save_case(Path(out))
            os._exit(0)
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(1)
    if point.startswith("after:"):
        time.sleep(float(point.removeprefix("after:")))
        os.kill(pid, signal.SIGKILL)  # not yet reaped: the pid is still this child's, even if it has exited
    return reap(pid)

save_case(Path(sys.argv[2]))
print("ready", flush=True)
for line in sys.stdin:
    out, point = line.split()
    started = time.perf_counter()
    for _ in range(3):
        status = attempt(out, point)
        if status is not None:
            break
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps({"killed": killed, "code": None if killed else os.WEXITSTATUS(status),
                      "seconds": time.perf_counter() - started}), flush=True)
"""


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_save_killed_at_any_point_leaves_no_partial_output_and_the_earlier_one_intact(tmp_path):
    reference = tmp_path / "reference"
    saver = subprocess.Popen([sys.executable, "-c", SAVER, ATTO.id, str(reference)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline(), "the saver process died before its first save"
        complete = tree(reference / ATTO.id)
        assert set(complete) == {"config.json", "model.safetensors", "preprocessor_config.json", "validation.json", "README.md"}

        def save(out: Path, point: str) -> dict:
            saver.stdin.write(f"{out} {point}\n")
            saver.stdin.flush()
            return json.loads(saver.stdout.readline())

        # Kill points: from outside at fractions of a forked save's duration (mid-weights, mid-card...),
        # and from inside at the steps that make a save atomic: validation.json written but not
        # renamed, permissions half set, everything staged but not renamed into place.
        duration = save(tmp_path / "timed", "none")["seconds"]
        inside = ["replace:1", "chmod:2", "rename:1"]
        points = [f"after:{duration * f:.4f}" for f in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)] + inside + ["none"]
        outcomes = {}
        for i, point in enumerate(points):
            out = tmp_path / f"run{i}"
            shutil.copytree(reference, out)  # an earlier output in the same --save directory
            (out / ATTO.id).rename(out / "earlier")
            outcomes[point] = save(out, point)
    finally:
        saver.stdin.close()
        saver.wait(timeout=60)

    for i, point in enumerate(points):
        out, outcome = tmp_path / f"run{i}", outcomes[point]
        assert outcome["killed"] or outcome["code"] == 0, f"{point}: the save failed on its own: {outcome}"
        assert tree(out / "earlier") == complete, f"{point}: the earlier output changed"
        final = out / ATTO.id
        if final.exists():  # all or nothing: a folder under the case's name is a complete save
            assert tree(final) == complete, f"{point}: {final} is partial: {sorted(tree(final))}"
        leftovers = sorted(p.name for p in out.iterdir() if p.name not in ("earlier", ATTO.id))
        assert all(name.startswith(f".staging-{ATTO.id}-") for name in leftovers), f"{point}: {leftovers}"
        if outcome["killed"]:
            assert not final.exists() or not leftovers, f"{point}: published and left a staging folder"

    # Not vacuous: the inside kills died mid-save (staged, never published), the unkilled save published.
    for point in inside:
        out = tmp_path / f"run{points.index(point)}"
        assert outcomes[point]["killed"] and not (out / ATTO.id).exists(), point
        assert any(p.name.startswith(".staging-") for p in out.iterdir()), f"{point}: killed before staging"
    assert not outcomes["none"]["killed"] and tree(tmp_path / f"run{len(points) - 1}" / ATTO.id) == complete


def test_parallel_workers_save_and_push_each_passed_case_exactly_once(hub_server, tmp_path):
    hub = hub_server
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.endpoint,
               HF_TOKEN=hub.token, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")
    cases = (ATTO, FEMTO, PICO)
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conversions.py"), "-p", "no:cacheprovider", "-q",
           "-n", "2", "-k", " or ".join(c.id for c in cases), "--weights", "random", "--save", str(out),
           "--push", "org", "--allow-random-push", "--report", str(report_path)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads(report_path.read_text())

    # Exactly the passed cases, each once: no second folder, no staging left by a second worker.
    assert sorted(p.name for p in out.iterdir()) == sorted(c.id for c in cases)
    for case in cases:
        assert len(report["cases"][case.id]["checks"]) == (ROOT / "tests" / "test_conversions.py").read_text().count("\n@pytest.mark.check(")
        assert report["saved"][case.id] == str(out / case.id)
        assert json.loads((out / case.id / "validation.json").read_text())["case"] == case.id
        repo = hub.repos[f"org/{case.hub_name}"]
        assert [c.title for c in repo.commits][0] == "initial commit" and len(repo.commits) == 2
        assert len(hub.requests_to(f"/api/models/org/{case.hub_name}/commit/", "POST")) == 1
        assert report["pushed"][case.id]["commit"] == repo.head.oid
        assert repo.files["model.safetensors"] == (out / case.id / "model.safetensors").read_bytes()
    assert len(hub.requests_to("/api/whoami-v2")) == 1  # the token is checked once, by the controller


def test_staging_left_by_a_killed_run_is_removed_and_a_live_one_kept(tmp_path):
    from converters import atomic

    live = atomic.staging_dir(tmp_path, "convnextv2_atto_1k_224")  # this process: alive
    dead = tmp_path / ".staging-convnextv2_atto_1k_224-999999999-k1ll3d"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"partial")
    assert atomic.remove_stale_staging(tmp_path) == [dead]
    assert live.is_dir() and not dead.exists()
