"""Files, options and processes as a hostile or careless user gives them (issue 20, items 4-15): a
wrong file is one error naming the case, the file and what it is; every list in a message is
bounded and every key quoted; no local path is published; SIGTERM and stale stagings leave
nothing behind; the reachability probe is bounded. Files are made by the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import converters
from converters import CheckpointError, atomic, cards, checks, sources
from tests.support.hub import hub_server  # noqa: F401  (the fixture)
from vision_port_fixtures import options
from vision_port_fixtures.originals import from_files

ROOT = Path(__file__).resolve().parents[1]
ATTO, FEMTO = converters.get("convnextv2_atto_1k_224"), converters.get("convnextv2_femto_1k_224")
# a key that would print a green fake result line in a terminal
HOSTILE_KEY = "head.bias\x1b[32m\n6 passed in 0.1s\x1b[0m"


@pytest.fixture(scope="module")
def atto():
    return converters.synthetic_original(ATTO)


def saved(tmp_path: Path, name: str, state: dict) -> Path:
    path = tmp_path / name
    torch.save({"model": state}, path)
    return path


def load_error(path: Path, case=ATTO) -> str:
    """What --checkpoint CASE=PATH says of the file (the plugin's loading: `from_files`)."""
    with pytest.raises(CheckpointError) as caught:
        from_files(case, {None: path}, published=False, sources={None: str(path)})
    message = str(caught.value)
    assert message.startswith(f"{case.id}: {path}: ") and "\n" not in message, message
    return message


def run_pytest(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conversions.py"), "-p", "no:cacheprovider",
                           "-p", "no:randomly", "-q", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- 4: another model's file


def test_another_models_file_is_one_error_naming_the_file_and_what_it_matches(tmp_path):
    femto = saved(tmp_path, "femto.pt", converters.synthetic_original(FEMTO))
    message = load_error(femto)
    assert f"matches the layout of {FEMTO.id} (family {FEMTO.family}, 100% of keys and shapes alike)" in message, message
    assert "139 of another shape" in message and "first of another shape: downsample_layers.0.0.bias" in message
    assert len(message) < 1000

    other = next(c for c in converters.cases() if c.family != ATTO.family and not c.streamed and not c.extra_files)
    path = tmp_path / "other.pt"
    torch.save(converters.synthetic_original(other.for_random_weights()), path)
    message = load_error(path)
    assert f"(family {other.family}, " in message and "first keys not in it: " in message and "more)" in message, message
    assert len(message) < 1000


def test_a_sibling_file_fails_the_case_once_and_a_save_ends_with_the_load_error(tmp_path):
    """The whole run: the load error once, one line for each check that needs the original, and
    --save ending with that error (not with a skip reason of another check). Items 4 and 12."""
    femto = saved(tmp_path, "femto.pt", converters.synthetic_original(FEMTO))
    result = run_pytest("-k", ATTO.id, "--checkpoint", f"{ATTO.id}={femto}", "--save", str(tmp_path / "out"))
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    lines = out.splitlines()
    assert len(lines) < 80, f"{len(lines)} lines:\n{out[-3000:]}"  # before: 750, the 139 mismatches listed five times
    assert out.count(f"matches the layout of {FEMTO.id}") <= 2, out  # the failure and the summary's last line
    assert out.count("downsample_layers.0.0.bias") <= 2, out
    for check in ("logits", "round_trip", "save_reload", "as_loaded"):
        assert f"{ATTO.id}: the original cannot be used, see key_coverage" in out, out
    last = [line for line in lines if "NOTHING CONVERTED" in line]
    assert last and f"{femto}" in last[0] and f"matches the layout of {FEMTO.id}" in last[0], out[-2000:]
    assert "audit not asked for" not in last[0]
    assert not list((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- 5: non-float weights


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_non_float_weights_are_refused_at_load_naming_keys_and_dtypes(tmp_path, atto, dtype):
    path = saved(tmp_path, "odd.pt", {k: (v * 100).to(dtype) for k, v in atto.items()})
    message = load_error(path)
    name = str(dtype).removeprefix("torch.")
    assert "weights that are not floating point: 140: " in message and f"downsample_layers.0.0.weight ({name})" in message, message
    assert "(135 more)" in message and len(message) < 1000
    one = dict(atto, **{"head.bias": atto["head.bias"].to(dtype)})  # one is enough
    assert "not floating point: 1: head.bias" in load_error(saved(tmp_path, "one.pt", one))


def test_integer_buffers_the_layout_declares_load(tmp_path):
    case = next(c for c in converters.cases() if any(not t.is_floating_point() for t in converters.original_layout(c).values())
                and not c.streamed and not c.extra_files).for_random_weights()
    state = converters.synthetic_original(case)
    integers = [k for k, v in state.items() if not v.is_floating_point()]
    path = tmp_path / "with_buffers.pt"
    torch.save(state, path)
    loaded = from_files(case, {None: path}, published=False, sources={None: str(path)})
    assert integers and all(not loaded.state[k].is_floating_point() for k in integers)


# --------------------------------------------------------------------------- 6: non-contiguous views


def test_non_contiguous_tensors_load_as_contiguous_and_give_the_same_outputs(tmp_path, atto):
    def view(t):  # the same values, laid out transposed in memory
        order = list(range(t.ndim))[::-1]
        return t.permute(order).contiguous().permute(order)

    views = {k: view(v) for k, v in atto.items()}
    assert all(torch.equal(views[k], atto[k]) for k in atto) and sum(not v.is_contiguous() for v in views.values()) == 41
    loaded = converters.load_original(ATTO, saved(tmp_path, "views.pt", views)).state
    assert all(t.is_contiguous() for t in loaded.values())
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    outputs = []
    for state in (loaded, atto):
        with torch.inference_mode():
            outputs.append(converters.build_model(ATTO, converters.convert(ATTO, state)[0])(pixel_values=pixels).logits)
    # before: 2.1e-06 (CPU kernels take another path on transposed strides); save/reload then failed at 0
    assert torch.equal(outputs[0], outputs[1]), (outputs[0] - outputs[1]).abs().max().item()


# --------------------------------------------------------------------------- 7: quoted keys


def test_hostile_key_names_are_escaped_in_every_message(tmp_path, atto):
    def clean(text: str) -> bool:
        return "\x1b" not in text and "\n6 passed" not in text

    hostile = dict(atto, **{HOSTILE_KEY: torch.zeros(3)})
    converted, coverage = converters.convert(ATTO, hostile)
    assert not coverage.ok and clean(coverage.describe()) and "head.bias\\x1b[32m\\n6 passed" in coverage.describe()
    assert clean(checks.key_coverage(ATTO.id, coverage).message)
    assert clean(checks.round_trip(ATTO.id, converters.plan_of(ATTO), converted, hostile).message)
    # the loader's errors: an entry that is not a tensor, a non-finite tensor, the ignored entries
    for state in ({**atto, HOSTILE_KEY: 3}, {**atto, HOSTILE_KEY: torch.tensor([float("nan")])}):
        assert clean(load_error(saved(tmp_path, "bad.pt", state)))
    with pytest.raises(TypeError) as caught:
        converters.convert(ATTO, {**atto, HOSTILE_KEY: 3})
    assert clean(str(caught.value))
    path = tmp_path / "wrapped.pt"
    torch.save({"model": atto, HOSTILE_KEY: 1}, path)
    notes = from_files(ATTO, {None: path}, published=False, sources={None: str(path)}).notes
    assert any("ignored entries" in n for n in notes) and all(clean(n) for n in notes), notes
    # another model's file whose keys are hostile: diagnose's listing
    resnet = {f"{HOSTILE_KEY}.{i}": torch.zeros(2) for i in range(3)}
    assert clean(load_error(saved(tmp_path, "keys.pt", resnet)))


# --------------------------------------------------------------------------- 8: depth and size


def test_a_dict_nested_thousands_deep_is_one_error(tmp_path, atto):
    deep = inner = {}
    for _ in range(5000):
        inner["x"] = {}
        inner = inner["x"]
    inner["w"] = torch.zeros(1)
    path = tmp_path / "deep.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # torch.save pickles it recursively
    try:
        torch.save({"model": {**atto, "deep": deep}}, path)
    finally:
        sys.setrecursionlimit(limit)
    message = load_error(path)  # before: RecursionError, a traceback in every check
    assert "entries nested more than 64 deep" in message and len(message) < 400, message


def test_a_file_with_many_extra_tensors_gets_bounded_messages(tmp_path, atto):
    """20 000 extra tensors (the probe: 200 000 printed 1.2 million lines, 48.9 MB): the load error
    and, for the library, the coverage report are the counts and the first few keys."""
    many = {k: v.contiguous() for k, v in atto.items()} | {f"extra.{i}": torch.zeros(1) for i in range(20_000)}
    path = tmp_path / "many.safetensors"
    save_file(many, str(path))
    message = load_error(path)
    assert "20000 keys not in that layout" in message and "(19995 more)" in message and len(message) < 1000, message
    _, coverage = converters.convert(ATTO, many)
    report = checks.key_coverage(ATTO.id, coverage).message
    assert report.startswith(f"{ATTO.id}: key coverage failed, 20000 problems")
    assert "... and 19950 more source key not consumed problems" in report and len(report.splitlines()) == 52


# --------------------------------------------------------------------------- 9: round trip message


def test_the_round_trip_message_says_what_failed(atto):
    extra = {**atto, "bogus": torch.zeros(2)}
    converted, _ = converters.convert(ATTO, extra)
    check = checks.round_trip(ATTO.id, converters.plan_of(ATTO), converted, extra)
    assert not check.ok
    assert check.message.startswith(f"{ATTO.id}: round trip is not exact: 1 original keys not given back:\n"), check.message
    assert "target key not produced: bogus" in check.message and "max abs diff 0 > tolerance 0" not in check.message
    changed = dict(converted)
    changed["classifier.bias"] = changed["classifier.bias"] + 1
    check = checks.round_trip(ATTO.id, converters.plan_of(ATTO), changed, atto)
    assert "1 tensors changed (max abs diff 1 > tolerance 0)" in check.message, check.message


# --------------------------------------------------------------------------- 10: no local path published


def test_a_local_checkpoint_path_reaches_no_saved_or_pushed_file(tmp_path, atto, hub_server):
    import huggingface_hub

    private = tmp_path / "home-of-alice" / "downloads"
    private.mkdir(parents=True)
    path = saved(private, "convnextv2_atto_1k_224_ema.pt", atto)
    out = tmp_path / "out"
    push = int(huggingface_hub.__version__.split(".")[0]) >= 1  # the loopback Hub speaks huggingface_hub >= 1
    result = run_pytest("-k", ATTO.id, "--weights", "pretrained", "--checkpoint", f"{ATTO.id}={path}", "--save", str(out),
                        *(["--push", "org"] if push else []),
                        env=dict(HF_ENDPOINT=hub_server.endpoint, HF_TOKEN=hub_server.token, HF_HUB_DISABLE_XET="1",
                                 HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    validation = json.loads((out / ATTO.id / "validation.json").read_text())
    skipped = validation["checks"]["expected_logits"]
    assert skipped["status"] == "skipped" and "is not the recorded original" in skipped["reason"]  # the real skip reason
    published = {f"saved {p.name}": p.read_bytes() for p in (out / ATTO.id).rglob("*") if p.is_file()}
    if push:
        repo = hub_server.repos[f"org/{ATTO.hub_name}"]
        published |= {f"pushed {name}": data for name, data in repo.files.items()}
        published["commit message"] = (repo.head.title + repo.head.description).encode()
    assert len(published) >= 5
    for where, data in published.items():
        for secret in (str(path), str(private), "home-of-alice"):
            assert secret.encode() not in data, f"{where} holds {secret}"
    card = (out / ATTO.id / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith(f"| {path.name} |"))
    assert "a local file, not fetched from" in row and "published at" not in row, row
    assert "no sha256 of the published file is recorded" in row, row  # expected_logits records none for atto
    assert str(path) in result.stdout or path.name in result.stdout  # the terminal may name it: it is local


def test_the_card_says_whether_a_local_file_is_the_published_one():
    sha = "ab" * 32
    base = {"case": ATTO.id, "family": ATTO.family, "model_class": ATTO.model_class, "output": ATTO.output,
            "hub_name": ATTO.hub_name, "images": ["x"], "versions": {"torch": torch.__version__},
            "original": {"weights": "pretrained", "source": "f.pt", "path": "f.pt", "sha256": sha, "published": False,
                         "files": [{"part": None, "source": "f.pt", "path": "f.pt", "sha256": sha}]}}
    said = {}
    for recorded in (sha, "cd" * 32):
        checks_ = {"expected_logits": {"status": "passed", "published_sha256": recorded}}
        card = cards.model_card(ATTO, base | {"checks": checks_}).content
        said[recorded] = next(line for line in card.splitlines() if line.startswith("| f.pt |"))
    assert "its sha256 is the recorded sha256 of the published file" in said[sha]
    assert "NOT the published file" in said["cd" * 32] and "`cdcdcdcdcdcd`" in said["cd" * 32]


# --------------------------------------------------------------------------- 11: options


class Config:
    def __init__(self, **given):
        self.given = {"weights": "auto", "save": None, "push": None, "allow_random_push": False, "update_expected": False,
                      "report": None, "checkpoint": [], "audit": False, "audit_repo": [], "html": None} | given

    def getoption(self, name):
        return self.given[name]


def test_the_same_case_twice_and_a_checkpoint_with_random_weights_are_usage_errors(tmp_path):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.touch()
    second.touch()
    with pytest.raises(pytest.UsageError, match=rf"{ATTO.id} is already given \({first}\)"):
        options.parse(Config(checkpoint=[f"{ATTO.id}={first}", f"{ATTO.id}={second}"]))
    with pytest.raises(pytest.UsageError, match="--checkpoint with --weights random"):
        options.parse(Config(weights="random", checkpoint=[f"{ATTO.id}={first}"]))
    assert options.parse(Config(checkpoint=[f"{ATTO.id}={first}"])).checkpoints == {ATTO.id: first}


# --------------------------------------------------------------------------- 13: SIGTERM


def wait_for(predicate, limit: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert process.poll() is None, f"exited early: {process.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_during_a_save_removes_the_staging_folder(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conversions.py"), "-p", "no:cacheprovider", "-p", "no:randomly",
           "-q", "-k", ATTO.id, "--weights", "random", "--save", str(out)]
    run = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: out.is_dir() and any(out.glob(".staging-*/model.safetensors")), 600, run)
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=120)[0]
    finally:
        run.kill()
    assert run.returncode != 0, output[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [], output[-2000:]  # before: the staging folder, holding the model


STREAMER = r"""
import sys, time
import converters
from converters import stream
case = converters.get(sys.argv[1]).for_random_weights()
real, calls = stream.write_file, []
def slow(*args, **kwargs):  # a shard written and verified, the next one on its way: midway
    calls.append(1)
    if len(calls) == 2:
        print("midway", flush=True)
        time.sleep(60)
    return real(*args, **kwargs)
stream.write_file = slow
stream.convert_file(case, sys.argv[2], sys.argv[3], shard_bytes=1 << 20)
"""


def test_sigterm_during_a_streamed_conversion_removes_the_staging_folder(tmp_path):
    case = next(c for c in converters.cases() if c.streamed)
    source = tmp_path / "source.torch"
    torch.save(converters.synthetic_original(case.for_random_weights()), source)
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.Popen([sys.executable, "-c", STREAMER, case.id, str(source), str(out / "converted")], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in iter(run.stdout.readline, ""):  # warnings may come first
            if line.strip() == "midway":
                break
        else:
            pytest.fail(f"exited before midway: {run.communicate()[0][-2000:]}")
        assert any(out.glob(".staging-*"))
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=120)[0]
    finally:
        run.kill()
    assert run.returncode != 0 and "KeyboardInterrupt" in output, output[-2000:]
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- 14: stale staging by lock


HOLDER = r"""
import os, sys, time
os.getpid = lambda: 999999999  # the PID it has in another namespace: no such process here
from pathlib import Path
from converters import atomic, cards
print(atomic.staging_dir(Path(sys.argv[1]), "convnextv2_atto_1k_224"), flush=True)
time.sleep(600)
"""


def test_a_live_staging_folder_of_another_pid_namespace_is_kept_and_a_dead_ones_removed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        assert live.is_dir() and "-999999999-" in live.name
        assert atomic.remove_stale_staging(tmp_path) == [] and live.is_dir()  # before: removed (no /proc/999999999)
    finally:
        holder.kill()
        holder.wait()
    assert atomic.remove_stale_staging(tmp_path) == [live] and not live.exists()  # its lock died with it


# --------------------------------------------------------------------------- 15: reachability probe


def test_the_reachability_probe_is_bounded_with_a_blackholed_resolver_and_asked_once_per_host(monkeypatch):
    """A resolver that never answers (a stub: nothing leaves this machine); before, the lookup was not
    bounded by the timeout and every case paid it again."""
    lookups = []

    def blackholed(host, *args, **kwargs):
        lookups.append(host)
        time.sleep(30)
        raise socket.gaierror("timed out")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_PROBED", {})
    monkeypatch.setattr(socket, "getaddrinfo", blackholed)
    started = time.monotonic()
    for _ in range(5):  # five cases of one host
        assert sources.reachable("https://dropped.invalid/weights.pt", timeout=0.5) is False
    assert time.monotonic() - started < 1.5 and lookups == ["dropped.invalid"]
