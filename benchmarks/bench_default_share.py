"""Each family's share of a test run: the default run (what `tox -e tf5` / `tf4` run) or the full run.

    .venv/bin/python benchmarks/bench_default_share.py [--full] [--json PATH] [-- PYTEST ARGS]
    .venv/bin/python benchmarks/bench_default_share.py --from PATH [PATH ...]

Runs pytest on `tests/` offline on random weights (as tox does; `--full` adds the plugin's --full,
as `tox -e full` does) in a child process, with this module as a pytest plugin: every test's wall
seconds (setup, call, teardown: the first check of a case pays for its conversion) and CPU seconds
(its process's, all threads, and its child processes') are written as they finish, attributed to a family (a case's family, a
family-parametrised test's family, a test module's family mark) or to the harness. Prints, per
family, the seconds and the share of the run's total, wall and CPU, measured in that one run, then
its dearest cases. PYTEST ARGS go to pytest (`-n 2`, `-k`, `-m`); `--json` keeps the per-test
figures for `--from`. Under other load, wall seconds stretch; CPU seconds much less: compare CPU.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUT_ENV = "BENCH_DEFAULT_SHARE_OUT"  # where the plugin in the pytest process appends its lines


# --------------------------------------------------------------------------- the plugin (in pytest)

def _family(item, names: set[str]) -> tuple[str, str | None]:
    """(family or "harness", case id or None) of one test item."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    case, family = params.get("case"), params.get("family")
    if case is not None and hasattr(case, "family"):
        return case.family, case.id
    if family is not None and getattr(family, "name", None) in names:
        return family.name, None
    marked = [m.name for m in item.iter_markers() if m.name in names]
    return (marked[0] if marked else "harness"), None


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its children waited for (subprocess tests)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    from converters.registry import family_names

    cpu, wall = _cpu(), time.perf_counter()
    try:
        return (yield)
    finally:
        family, case = _family(item, set(family_names()))
        line = {"test": item.nodeid, "family": family, "case": case,
                "wall": time.perf_counter() - wall, "cpu": _cpu() - cpu}
        with open(os.environ[OUT_ENV], "a") as f:  # one short append per test: whole lines under xdist
            f.write(json.dumps(line) + "\n")


# --------------------------------------------------------------------------- the benchmark

def run(full: bool, pytest_args: list[str]) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory(prefix="bench-share-") as tmp:
        out = Path(tmp) / "tests.jsonl"
        out.touch()
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_XET="1",
                   HYPOTHESIS_PROFILE=os.environ.get("HYPOTHESIS_PROFILE", "fast"), **{OUT_ENV: str(out)},
                   PYTHONPATH=os.pathsep.join(p for p in (str(Path(__file__).parent), str(ROOT), os.environ.get("PYTHONPATH")) if p))
        cmd = [sys.executable, "-m", "pytest", "-p", "bench_default_share", "-p", "no:randomly", "-q",
               "--weights", "random", *(["--full"] if full else []), *pytest_args]
        print("$", " ".join(cmd), flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env)
        elapsed = time.perf_counter() - started
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()], elapsed


def shares(tests: list[dict], elapsed: float | None, what: str) -> None:
    by_family: dict[str, dict] = defaultdict(lambda: {"wall": 0.0, "cpu": 0.0, "tests": 0})
    by_case: dict[tuple, dict] = defaultdict(lambda: {"wall": 0.0, "cpu": 0.0})
    for t in tests:
        f = by_family[t["family"]]
        f["wall"] += t["wall"]
        f["cpu"] += t["cpu"]
        f["tests"] += 1
        if t["case"]:
            c = by_case[t["family"], t["case"]]
            c["wall"] += t["wall"]
            c["cpu"] += t["cpu"]
    wall = sum(f["wall"] for f in by_family.values()) or 1.0
    cpu = sum(f["cpu"] for f in by_family.values()) or 1.0
    print(f"\n{what}: {len(tests)} tests, {wall:.0f} s of tests (wall, summed over processes), {cpu:.0f} CPU s"
          + (f", run {elapsed:.0f} s wall including collection" if elapsed else ""))
    print(f"{'family':18} {'tests':>6} {'wall s':>8} {'wall %':>7} {'CPU s':>8} {'CPU %':>7}")
    for name, f in sorted(by_family.items(), key=lambda kv: -kv[1]["cpu"]):
        print(f"{name:18} {f['tests']:6d} {f['wall']:8.1f} {100 * f['wall'] / wall:6.1f}% {f['cpu']:8.1f} {100 * f['cpu'] / cpu:6.1f}%")
    print("dearest cases (CPU s, wall s): " + ", ".join(
        f"{case} {c['cpu']:.0f} ({c['wall']:.0f})" for (_, case), c in sorted(by_case.items(), key=lambda kv: -kv[1]["cpu"])[:8]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the full run (pytest --full, as tox -e full)")
    parser.add_argument("--json", type=Path, help="write the per-test figures here (for --from)")
    parser.add_argument("--from", dest="sources", type=Path, nargs="+",
                        help="print the shares of --json files (several: parts of one run, added up), run nothing")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: tests/)")
    args = parser.parse_args(argv)
    if args.sources:
        saved = [json.loads(path.read_text()) for path in args.sources]
        shares([t for part in saved for t in part["tests"]], sum(part.get("elapsed") or 0 for part in saved) or None,
               " + ".join(part["what"] for part in saved))
        return 0
    tests, elapsed = run(args.full, args.pytest_args or ["tests"])
    what = ("full run" if args.full else "default run") + (f" ({' '.join(args.pytest_args)})" if args.pytest_args else "")
    if args.json:
        args.json.write_text(json.dumps({"what": what, "elapsed": elapsed, "tests": tests}))
    shares(tests, elapsed, what)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
