"""Failure paths found by hostile use (issue 10): whatever was asked for and did not happen (a
save, the report) fails the run and says why; bad paths are usage errors; nothing half-written.
Session finish is driven directly (no subprocess): a HarnessSession on a stand-in config."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import converters
from converters import atomic, cards, save
from converters.record import CheckResult
from vision_port_fixtures import options
from vision_port_fixtures.options import OPTIONS, Options
from vision_port_fixtures.session import HarnessSession

ATTO = converters.get("convnextv2_atto_1k_224")
CHECKS = ("key_coverage", "logits", "save_reload")


class Terminal:
    def __init__(self):
        self.lines = []

    def section(self, title):
        self.lines.append(f"== {title}")

    def write_line(self, line, **markup):
        self.lines.append(line)


def harness_session(opts: Options, worker: bool = False) -> HarnessSession:
    config = SimpleNamespace(stash={OPTIONS: opts})
    if worker:
        config.workerinput, config.workeroutput = {}, {}
    return HarnessSession(config)


def passed_and_staged(session: HarnessSession, save: Path) -> Path:
    """ATTO with every check passed and its folder staged, as the save/reload check leaves it."""
    results = session.results
    for check in CHECKS:
        results.declare({"case": ATTO.id, "check": check, "may_skip": False})
    entry = results.entry(ATTO.id, ATTO.family)
    entry.weights = "random"
    entry.checks = {c: CheckResult("passed", max_abs_diff=0.0, atol=0.0) for c in CHECKS}
    staging = atomic.staging_dir(save, ATTO.id)
    results.staged[ATTO.id] = (staging, {"original": {"weights": "random", "source": "synthetic"}, "images": ["x"]})
    return staging


def finish(session: HarnessSession, exitstatus: int = 0) -> tuple[int, list[str]]:
    pytest_session = SimpleNamespace(exitstatus=exitstatus)
    session.pytest_sessionfinish(pytest_session)
    terminal = Terminal()
    session.pytest_terminal_summary(terminal, session.config)
    return pytest_session.exitstatus, terminal.lines


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_save_failing_at_finish_fails_the_session_saying_why(tmp_path, monkeypatch):
    monkeypatch.setattr(save, "finish_save", no_space)
    session = harness_session(Options(save=tmp_path / "out", report=tmp_path / "r.json"))
    staging = passed_and_staged(session, tmp_path / "out")
    status, lines = finish(session)
    assert status == pytest.ExitCode.TESTS_FAILED
    assert any(f"{ATTO.id} SAVE FAILED" in line and "No space left on device" in line for line in lines), lines
    assert not staging.exists() and list((tmp_path / "out").iterdir()) == []
    assert "No space left" in json.loads((tmp_path / "r.json").read_text())["saved"][ATTO.id]


def test_under_xdist_a_workers_failed_save_fails_the_controller(tmp_path, monkeypatch):
    monkeypatch.setattr(save, "finish_save", no_space)
    worker = harness_session(Options(save=tmp_path / "out"), worker=True)
    passed_and_staged(worker, tmp_path / "out")
    finish(worker)
    controller = harness_session(Options(save=tmp_path / "out"))
    controller.pytest_testnodedown(SimpleNamespace(workeroutput=worker.config.workeroutput), None)
    status, lines = finish(controller)
    assert status == pytest.ExitCode.TESTS_FAILED
    assert any(f"{ATTO.id} SAVE FAILED" in line for line in lines), lines


def test_a_report_failing_at_finish_prints_the_summary_leaves_no_temporary_and_fails(tmp_path):
    report = tmp_path / "r.json"
    session = harness_session(Options(report=report))
    passed_and_staged(session, tmp_path / "staging")
    report.mkdir()  # in the way at finish (it passed the up-front check)
    status, lines = finish(session)
    assert status == pytest.ExitCode.TESTS_FAILED
    assert "== conversion summary" in lines
    assert any("REPORT NOT WRITTEN" in line and str(report) in line for line in lines), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "staging"]  # no .r.json.tmp


def test_write_json_failing_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "replace", no_space)
    with pytest.raises(OSError):
        atomic.write_json(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


class Config:
    """What options.parse reads of a pytest config."""

    def __init__(self, **given):
        self.given = {"weights": "auto", "save": None, "push": None, "allow_random_push": False,
                      "update_expected": False, "report": None, "checkpoint": [], "audit": False,
                      "audit_repo": [], "html": None} | given

    def getoption(self, name):
        return self.given[name]


def test_parsing_the_options_changes_nothing_and_the_session_start_does_the_rest(tmp_path, monkeypatch):
    """options.parse reads and checks; folders, the stale staging sweep and the Hub's whoami wait
    for the session's start (options.prepare)."""
    from converters import publish

    asked = []
    monkeypatch.setattr(publish, "whoami", lambda *a, **k: asked.append("whoami") or "someone")
    stale = tmp_path / "out" / ".staging-x-1-abc"
    stale.mkdir(parents=True)
    given = Config(save=str(tmp_path / "out"), report=str(tmp_path / "reports" / "r.json"), html=str(tmp_path / "pages" / "p.html"),
                   push="org", audit=True)
    before = sorted(tmp_path.rglob("*"))
    opts = options.parse(given)
    assert sorted(tmp_path.rglob("*")) == before and not asked and opts.audit_dir is None
    options.prepare(opts)
    assert asked == ["whoami"] and not stale.exists()
    assert (tmp_path / "reports").is_dir() and (tmp_path / "pages").is_dir() and opts.audit_dir == tmp_path / "reports"


def test_an_existing_directory_as_report_is_refused_up_front(tmp_path):
    with pytest.raises(pytest.UsageError, match=r"--report .*is a directory"):
        options.parse(Config(report=str(tmp_path)))


def test_non_finite_tensors_are_refused_at_load_naming_every_key(tmp_path):
    import torch

    state = converters.synthetic_original(ATTO)
    state["head.bias"][3] = float("nan")
    state["downsample_layers.0.0.weight"][0, 0, 0, 0] = float("inf")
    torch.save({"model": state}, tmp_path / "nan.pt")
    with pytest.raises(converters.CheckpointError) as e:
        converters.load_original(ATTO, tmp_path / "nan.pt")
    assert ATTO.id in str(e.value) and "nan.pt" in str(e.value)
    assert "downsample_layers.0.0.weight, head.bias" in str(e.value) and "2 tensors" in str(e.value)
    with pytest.raises(converters.CheckpointError, match="non-finite values .* in 2 tensors"):  # streamed cases' path
        converters.load_original(ATTO, tmp_path / "nan.pt", mmap=True)


def test_the_report_is_strict_json_non_finite_figures_are_null_with_a_reason(tmp_path):
    atomic.write_json(tmp_path / "r.json", {"logits": {"max_abs_diff": float("inf"), "atol": 1e-5}, "v": [float("nan"), 1.0]})
    text = (tmp_path / "r.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the report"))
    assert data == {"logits": {"max_abs_diff": None, "atol": 1e-5, "non_finite": {"max_abs_diff": "inf"}}, "v": [None, 1.0]}


@pytest.mark.parametrize("option", ["save", "report", "checkpoint"])
def test_a_symlink_loop_is_a_usage_error_naming_the_option_and_path(tmp_path, option):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    value = [f"{ATTO.id}={loop}"] if option == "checkpoint" else str(loop / "x")
    with pytest.raises(pytest.UsageError, match=rf"--{option} .*{loop}.*not a usable path"):
        options.parse(Config(**{option: value}))


def test_published_records_name_a_local_file_by_name_and_sha256_and_the_card_table_holds(tmp_path):
    import torch

    from converters import checkpoint, publish
    from vision_port_fixtures.originals import from_files

    path = tmp_path / "we`ird|name.pt"
    torch.save({"model": converters.synthetic_original(ATTO)}, path)
    original = from_files(ATTO, {None: path}, published=False, sources={None: str(path)})
    public = original.describe(public=True)
    sha256 = checkpoint.sha256(path)
    validation = {"case": ATTO.id, "family": ATTO.family, "model_class": ATTO.model_class, "output": ATTO.output,
                  "hub_name": ATTO.hub_name, "images": ["x"], "versions": {"torch": torch.__version__}, "original": public,
                  "checks": {"logits": {"status": "passed", "max_abs_diff": 0.0, "atol": 1e-5, "reason": None},
                             "expected_logits": {"status": "skipped", "reason": "a | b `c`\nsecond line"}}}
    card = cards.model_card(ATTO, validation).content
    title, description = publish.commit_message(validation)
    for published in (json.dumps(public), card, title + description):
        assert str(tmp_path) not in published
    assert public["source"] == public["path"] == path.name and public["sha256"] == sha256
    assert sha256 in card and sha256 in description and "we`ird|name.pt" in description
    assert original.describe()["path"] == str(path)  # the local report keeps the full path
    # every row of each table is one line with the cells of its header
    for section, count in (("## Original weights", 2), ("## Validation", 3)):
        table = card.split(section)[1].split("\n## ")[0]
        rows = [line for line in table.splitlines() if line.startswith("| ")]
        cells = [len(re.split(r"(?<!\\)\|", row)) for row in rows]
        assert len(rows) == count and len(set(cells)) == 1, rows
    assert r"| expected_logits | skipped |  |  | a \| b \`c\`<br>second line |" in card
    assert "``we`ird|name.pt``" in card


def test_hints_for_the_common_wrong_file():
    """Another family's file, the right layout under `module.`, a dict holding a non-tensor. The
    other file is any registry case of another family (generic: none is named here)."""
    other = next(c for c in converters.cases() if c.family != ATTO.family)
    hint = converters.layout_hint(ATTO, converters.original_layout(other))
    assert "matches the layout of" in hint and f"(family {other.family}, 100% of keys and shapes alike)" in hint, hint
    state = converters.synthetic_original(ATTO)
    assert converters.layout_hint(ATTO, state) is None
    hint = converters.layout_hint(ATTO, {f"module.{k}": v for k, v in state.items()})
    assert "extra prefix 'module.'" in hint, hint
    state["head.bias"] = 3
    with pytest.raises(TypeError, match=rf"{ATTO.id}: convert .*not tensors: head.bias \(int\)"):
        converters.convert(ATTO, state)


def test_a_zip_checkpoint_with_a_flipped_byte_is_refused_by_its_crc(tmp_path):
    import zipfile

    import torch

    path = tmp_path / "flipped.pt"
    torch.save({"model": converters.synthetic_original(ATTO)}, path)
    largest = max(zipfile.ZipFile(path).infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    data[largest.header_offset + 512 + largest.file_size // 2] ^= 0x01  # inside the tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(converters.CheckpointError, match=rf"{ATTO.id}: .*flipped.pt: corrupt .*{largest.filename}.*CRC-32"):
        converters.load_original(ATTO, path)


def test_a_half_precision_streamed_save_keeps_its_dtype_in_the_shards_and_the_config(tmp_path):
    """Streamed cases (memory-mapped originals, written shard by shard) keep fp16 too."""
    import json

    from converters import stream

    case = next(c for c in converters.cases() if c.streamed).for_random_weights()
    half = {k: v.half() if v.is_floating_point() else v for k, v in converters.synthetic_original(case).items()}
    streamed = stream.save(case, half, tmp_path / "out", shard_bytes=1 << 20)
    assert len(streamed.files) > 1
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"  # 4.x names the field torch_dtype
    assert not stream.verify(tmp_path / "out", converters.convert(case, half)[0])
