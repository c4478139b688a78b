"""`--html PATH`: the page of a real run, read without a browser (html.parser: structure, one pixel
figure per (case, photograph, processor path), every image a decodable PNG, nothing external) and
in headless Chromium (it renders, every image decoded); text from files escaped; bad paths refused
before any work; a page that cannot be written fails the run and leaves nothing behind.

The run is the smallest runnable case of the registry with a deliberately broken plan
(tests/support/broken_plan.py: two same-shape tensors of one module swapped), so the page holds a
failed logits check with its per-block parity chart, and a failed as-loaded check with its images.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

import converters
from converters import checks, compat, html_report, plots
from tests.support.broken_plan import ENV as BROKEN_PLAN
from tests.test_loud_failures import Config
from tests.test_session import run_harness
from vision_port_fixtures import options
from vision_port_fixtures.models import saved_synthetic

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as the environment's notes say to run it: no sandbox (root), nothing fetched in the background
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# the real run (a module fixture) once, in one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("html_report")
EVIL = "<script>alert(1)</script>\x1b[31mred\x1b[0m & \u202egnp.exe"


def smallest_case():
    """The registry's smallest case that runs every check here (no family named)."""
    runnable = [c for c in converters.cases() if "large" not in c.marks and not c.streamed
                and not compat.unsupported(c) and not c.pixel_divergence and not c.output_divergence]
    return min(runnable, key=lambda c: sum(t.numel() for t in converters.original_layout(c.for_random_weights()).values()))


class Page(HTMLParser):
    """What a test needs of the page: every tag and attribute, images, each case's check statuses
    in table order, the text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.attributes, self.images, self.text = set(), [], [], []
        self.statuses: dict[str, list[str]] = {}
        self.verdicts: list[str] = []  # the class of each audit finding's verdict cell
        self._section, self._in_checks = None, False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        self.attributes += list(attrs.items())
        if tag == "section":
            self._section = attrs.get("id")
        if tag == "table":
            self._in_checks = attrs.get("class") == "checks"
        if tag == "td" and self._in_checks and "st" in (attrs.get("class") or "").split():
            self.statuses.setdefault(self._section, []).append(attrs["class"].split()[1])
        elif tag == "td" and (attrs.get("class") or "").split()[1:] in (["same"], ["drift"], ["wrong"]):
            self.verdicts.append(attrs["class"].split()[1])
        if tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_checks = False

    def handle_data(self, data):
        self.text.append(data)


def decoded_png(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:60]
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):], validate=True)))
    image.load()
    assert image.format == "PNG" and image.width > 100 and image.height > 100
    return image


def assert_self_contained(page: Page) -> None:
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "base", "form"}, page.tags
    for name, value in page.attributes:
        assert not name.startswith("on"), (name, value)  # no event handler
        if name in ("src", "href"):
            assert value.startswith(("data:image/png;base64,", "#")), (name, value[:80])


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """(case, page text, report): a real run of one case with a broken plan, --html and --report, and
    an audit of a folder holding the right conversion (as if published): its findings name the swap.
    In a pytest-xdist worker (-n 2, as CI runs): the pictures travel to the controller in its reports."""
    tmp = tmp_path_factory.mktemp("html")
    case = smallest_case()
    saved_synthetic(case, tmp / "published")
    result = run_harness(tmp, "-n", "2", "-p", "tests.support.broken_plan", "-k", case.id, "-m", "conversion", "--weights", "random",
                         "--html", str(tmp / "out" / "page.html"), "--report", str(tmp / "r.json"),
                         "--audit-repo", f"{case.id}={tmp / 'published'}", env={BROKEN_PLAN: case.id})
    assert result.returncode == 1, result.stdout[-3000:]  # the broken plan fails the case
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["page.html"]  # no temporary file left
    return case, (tmp / "out" / "page.html").read_text(encoding="ascii"), json.loads((tmp / "r.json").read_text())


def test_the_page_of_a_real_run_holds_each_check_figure_and_chart(broken_run):
    case, text, report = broken_run
    page = Page(text)
    assert_self_contained(page)
    checks = report["cases"][case.id]["checks"]
    statuses = page.statuses[html_report._anchor(case.id)]
    assert statuses[0] == "failed" and checks["logits"]["status"] == "failed"  # a failed check first
    assert sorted(statuses) == sorted(c["status"] for c in checks.values())  # every check has its row

    # one pixel figure per (photograph, processor path) the as-loaded check compared, each a PNG
    as_loaded = checks["as_loaded"]
    paths = [p for p in ("default", "pil") if isinstance(as_loaded.get(p), dict)]
    assert paths == (["default", "pil"] if compat.MAJOR >= 5 else ["default"])
    shown = [(i["data-case"], i["data-photograph"], i["data-path"]) for i in page.images if i.get("class") == "pixels"]
    assert sorted(shown) == sorted((case.id, photo, path) for photo in as_loaded["photographs"] for path in paths)
    for image in page.images:
        decoded_png(image["src"])

    # the per-block parity chart of the failed logits check, the first block over tolerance named
    parity = checks["logits"]["block_parity"]
    assert parity["first_block_over"] and len(parity["tolerances"]) == len(parity["blocks"])
    assert [i["data-case"] for i in page.images if i.get("class") == "parity"] == [case.id]
    said = "".join(page.text)
    assert f"first block over tolerance: {parity['first_block_over']}" in said
    assert "As loaded, per processor backend" in said and as_loaded["default"]["processor_class"] in said

    # the audit's findings, each with its verdict: the published (right) weights differ from ours
    findings = checks["audit"]["findings"]
    classes = ["same" if f["verdict"] == "same" else f["verdict"].split(":")[0] for f in findings]
    assert page.verdicts == classes and "wrong" in classes
    assert any(f["verdict"].startswith("wrong: tensor") for f in findings) and f"Audit of {checks['audit']['repo']}" in said


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
def test_the_page_renders_in_headless_chromium_every_image_decoded(broken_run, tmp_path):
    case, text, _ = broken_run
    widths = [decoded_png(i["src"]).width for i in Page(text).images]
    # a copy with a probe script (the page itself has none): after load, how many images decoded
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", "<script>addEventListener('load', () => { const im = [...document.images];"
                                  " document.body.dataset.decoded = im.filter(i => i.complete && i.naturalWidth > 0).length"
                                  " + ' of ' + im.length + ': ' + im.map(i => i.naturalWidth).join(','); });</script></body>"))
    run = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dumped = subprocess.run([*run, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=180)
    expected = f'data-decoded="{len(widths)} of {len(widths)}: {",".join(map(str, widths))}"'
    assert expected in dumped.stdout, (dumped.stdout[:300], dumped.stderr[-2000:])

    page, shot = tmp_path / "page.html", tmp_path / "shot.png"  # the page itself, as a person sees it: not blank
    page.write_text(text)
    subprocess.run([*run, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()], capture_output=True, timeout=180)
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert image.size == (1280, 2400) and len(colours) > 1000, f"{len(colours or [])} colours: a blank page?"


def _evil_results() -> tuple[dict, dict]:
    """A failed case whose reasons, figure keys, block names and audit findings carry markup, ANSI
    escapes and a bidi override; a case with neither images nor parity."""
    blocks = [["encoder.0", 1e-7, 1e-7], [f"encoder.1{EVIL}$\\frac{{$x", 3.0, 0.5], ["encoder.2", 0.0, 0.0]]
    cases = {
        "case_a": {"family": "f", "weights": "random", "source": EVIL, "checks": {
            "pixel_values": {"status": "passed", "max_abs_diff": 0.0, "atol": 0.0, "reason": None},
            "logits": {"status": "failed", "max_abs_diff": 3.0, "atol": 1e-5, "reason": f"line one\n{EVIL}", EVIL: 1.5,
                       "block_parity": {"blocks": blocks, "worst_block": blocks[1][0], "first_block_over": blocks[1][0],
                                        "unpaired_blocks": [EVIL], "tolerances": [1e-5, 1e-5, 1e-5]}},
            "audit": {"status": "failed", "max_abs_diff": None, "atol": None, "reason": EVIL, "repo": f"org/{EVIL}",
                      "findings": [{"area": "weights", "subject": EVIL, "verdict": f"wrong: tensor {EVIL}", "detail": EVIL}],
                      "notes": [EVIL]}}},
        "case_b": {"family": "f", "weights": None, "source": None, "checks": {
            "key_coverage": {"status": "skipped", "max_abs_diff": None, "atol": None, "reason": "no weights"}}},
    }
    reference = torch.zeros(3, 120, 120)
    pictures = {"case_a": {EVIL: {"pil": plots.pixel_images(reference, reference + 0.1, [0.5] * 3, [0.5] * 3)
                                  | {"processor_class": EVIL}}}}
    return cases, pictures


def test_text_from_files_is_escaped_and_cases_without_pictures_keep_their_row():
    cases, pictures = _evil_results()
    text = html_report.page(cases, pictures)
    page = Page(text)
    assert_self_contained(page)
    assert text.isascii() and "\x1b" not in text and "\u202e" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31mred\\x1b[0m &amp; \\u202egnp.exe" in text
    assert [i["class"] for i in page.images] == ["pixels", "parity"]  # no image injected, none dropped
    for image in page.images:
        decoded_png(image["src"])
    assert page.statuses["case-case_a"] == ["failed", "failed", "passed"]  # failed first
    assert page.statuses["case-case_b"] == ["skipped"]  # no pictures, no parity: still its row
    assert "No pixel images" in " ".join(page.text)


def test_the_difference_map_is_in_grey_levels_where_the_pixels_differ():
    std, mean = [0.229, 0.224, 0.225], [0.485, 0.456, 0.406]
    reference = torch.randn(3, 40, 50, generator=torch.Generator().manual_seed(0))
    shifted = reference.clone()
    shifted[:, 7] = reference[:, 8]  # one row taken from its neighbour
    record = plots.pixel_images(reference, shifted, mean, std)
    levels = plots._array(record["levels"]) / plots.LEVEL_STEPS
    expected = ((shifted - reference).abs() * torch.tensor(std).view(-1, 1, 1) * 255).amax(0)
    assert levels.shape == (40, 50) and abs(levels - expected.numpy()).max() <= 0.5 / plots.LEVEL_STEPS
    assert levels[7].min() > 0 and levels.sum() == levels[7].sum()  # that row only
    assert record["max_levels"] == round(expected.max().item(), 3)
    same = plots.pixel_images(reference, reference, mean, std)
    assert same["max_levels"] == 0.0 and same["original"] == same["transformers"]
    other = plots.pixel_images(reference, reference[:, :30], mean, std)  # another shape: no map, the images kept
    assert other["levels"] is None and decoded_png_bytes(other["transformers"]).size == (50, 30)


def test_the_as_loaded_check_keeps_pictures_only_when_asked(tmp_path, monkeypatch):
    """Without --html no picture is made (no cost); with it, one per (photograph, processor path)."""
    from vision_port_fixtures.images import photographs

    case, folder, oracle = saved_synthetic(smallest_case(), tmp_path)
    photos = dict(list(photographs().items())[:2])
    source = converters.source_transform(case)
    monkeypatch.setattr(plots, "pixel_images", lambda *a: pytest.fail("a picture made without --html"))
    assert checks.as_loaded(case, folder, oracle, source, photos).ok
    monkeypatch.undo()
    pictures = {}
    checked = checks.as_loaded(case, folder, oracle, source, photos, pictures)
    paths = [p for p in ("default", "pil") if p in checked.figures]
    assert checked.ok and list(pictures) == list(photos) and all(list(by_path) == paths for by_path in pictures.values())
    for by_path in pictures.values():
        for path, record in by_path.items():
            assert record["max_levels"] <= checked.figures[path]["grey_levels"]  # the batch's figure is the worst image's
            assert decoded_png_bytes(record["original"]).size == decoded_png_bytes(record["transformers"]).size


def decoded_png_bytes(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


# --------------------------------------------------------------------------- bad paths


def test_a_directory_a_path_under_a_file_and_no_matplotlib_are_refused_up_front(tmp_path, monkeypatch):
    with pytest.raises(pytest.UsageError, match=r"--html .*is a directory"):
        options.parse(Config(html=str(tmp_path)))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(pytest.UsageError, match=r"--html .*a_file: cannot write there"):
        options.prepare(options.parse(Config(html=str(tmp_path / "a_file" / "page.html"))))
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    with pytest.raises(pytest.UsageError, match=r"--html .*needs matplotlib"):
        options.parse(Config(html=str(tmp_path / "page.html")))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root can mount one; elsewhere the test skips, saying so)."""
    mount = tmp_path / "mnt"
    mount.mkdir()

    def mounted(*opts: str) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k", *opts)), "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
        return mount

    yield mounted
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_refused_up_front(small_tmpfs):
    mount = small_tmpfs()
    with open(mount / "filler", "wb", buffering=0) as filler:  # fill it
        with pytest.raises(OSError) as full:
            while True:
                filler.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    tempfile.NamedTemporaryFile(dir=mount).close()  # an empty file can still be created there: the probe writes
    with pytest.raises(pytest.UsageError, match=r"--html .*cannot write there \(No space left on device\)"):
        options.prepare(options.parse(Config(html=str(mount / "page.html"))))


def test_a_read_only_directory_is_refused_up_front(small_tmpfs):
    mount = small_tmpfs("ro")
    with pytest.raises(pytest.UsageError, match=r"--html .*cannot write there \(Read-only file system\)"):
        options.prepare(options.parse(Config(html=str(mount / "page.html"))))


def test_a_bad_html_path_stops_the_run_before_any_work(tmp_path):
    result = run_harness(tmp_path, "-k", smallest_case().id, "--weights", "random", "--html", str(tmp_path))
    assert result.returncode == 4 and "--html" in result.stderr and "is a directory" in result.stderr
    assert "passed" not in result.stdout and "failed" not in result.stdout


def test_a_page_that_cannot_be_written_fails_the_run_and_leaves_nothing(tmp_path, monkeypatch):
    from converters import atomic
    from converters.record import CaseRecord
    from vision_port_fixtures.outputs import write_html as _write_html
    from vision_port_fixtures.results import Results

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    class Session:
        exitstatus = 0

    monkeypatch.setattr(atomic.os, "replace", no_space)
    cases, pictures = _evil_results()
    results, session = Results(cases={c: CaseRecord.from_json(record) for c, record in cases.items()}, pictures=pictures), Session()
    _write_html(session, results, options.Options(html=tmp_path / "page.html"))
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert results.report_error == f"--html {tmp_path / 'page.html'} not written: No space left on device"
    assert list(tmp_path.iterdir()) == []
