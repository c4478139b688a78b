"""Streaming conversion of a large checkpoint vs `cp`, round by round.

    .venv/bin/python benchmarks/bench_stream.py [--rounds 5] [--dir /tmp] [--baseline main] [--recipe] [--busy-core]

Builds a synthetic checkpoint in RegNet SEER's vissl layout (the 10B's depths and parts at about a
quarter of its widths, random tensors, >= 2.5 GB), then runs rounds; each round times, each in its
own process and in an order that alternates from round to round:

- cp:       `cp SRC DST` then `sync DST` (an fsync of the output: the durability the stream has);
- stream:   ours, `converters.stream.convert_file`: memory-mapped source, 1 GiB safetensors shards
            + index, every tensor read back and compared with its source, each shard fsynced,
            staged and renamed in;
- baseline: (with --baseline REV) the same with the converters package as it is at git REV, so one
            run measures a change before and after on the same machine state;
- recipe:   (with --recipe) the original script's way: torch.load the whole file, rename, torch.save.

`--busy-core` keeps one other core busy for the whole run (a process spinning in a loop), as a shared
CI machine's other job would. The figures are the ratios per round (stream / that round's cp), of
wall seconds and of CPU seconds, and their min / median / max over the rounds: a shared machine's
disk and memory drift, and only a ratio inside one round compares like with like. Before every timed step the same preparation:

1. the source's cached pages are evicted with posix_fadvise(DONTNEED) (cold source; drop_caches is
   not used: it would empty the cache of this machine's other users too, and the outputs of
   earlier steps are deleted anyway); its residency is checked with mincore just before the step;
2. a settle of --settle seconds. This VM reports freed memory to its host (free page reporting,
   `page_reporting.page_reporting_order` on the kernel command line, 2 s after the free): page
   cache allocated from pages the host took back costs a host fault each, and measured here `cp`
   takes 1.6-2.7 s when started right after the previous step's memory was freed and 5.5-6.8 s
   10 s later. The settle puts every step in the second state, instead of wherever it falls;
3. `sync` (everything dirty, this machine's other users' writes too), then a wait until Dirty +
   Writeback in /proc/meminfo are below --drain-mb, so no earlier write-back lands in the step.

Recorded per step: its CPU seconds (user + system: on a machine whose cores are shared the steadier
figure of the work done), vm.dirty_* settings, Dirty / Writeback / MemFree before the step and the peak
of Dirty and Writeback during it, the source's resident bytes, the load average. The stream's time
is split (timing wrappers around the converters' own functions, in its process): setup (the
loader's CRC-32 check of the zip and its non-finite scan, shown apart too, torch.load of the
mapping, key plan, config.json, staging), shard headers, the kernel copies,
then in the verifier thread the verification reads and the fsyncs, and the tail (what is left
after the last copy: the last shard's verification and fsync, the index, the rename).
A Python method's time is its work after its imports and the key map's trace (printed separately:
neither grows with the file); its memory is the peak anonymous memory (RssAnon, sampled by this
process every 2 ms) above its own baseline after the imports. The synthetic file and all outputs
are deleted at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASE_ID = "regnet_y_10b_seer_in1k"
GROUP_WIDTH = 266  # 1010 / 3.8: the 10B's group counts (2, 4, 11, 28) at about a quarter of its widths


def bench_case(group_width: int = GROUP_WIDTH):
    import converters

    case = converters.get(CASE_ID)
    widths = [group_width * n for n in (2, 4, 11, 28)]
    return dataclasses.replace(case, config={**case.config, "hidden_sizes": widths, "groups_width": group_width})


def make_checkpoint(path: Path, group_width: int) -> int:
    import torch

    import converters

    case = bench_case(group_width)
    model = {"trunk": {}, "heads": {}}  # vissl's file structure: trunk and heads under the base model
    for key, value in converters.synthetic_original(case).items():
        part, _, rest = key.partition(".")
        model[part][rest] = value
    torch.save({"classy_state_dict": {"base_model": {"model": model}}, "iteration": 124500}, path)
    return path.stat().st_size


# --------------------------------------------------------------------------- the methods (child processes)


def cpu_seconds(who=resource.RUSAGE_SELF) -> float:
    """User + system CPU time (RUSAGE_SELF: all this process's threads; RUSAGE_CHILDREN: its reaped children)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def rss_anon_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def instrument(stream, checkpoint) -> dict:
    """Timing wrappers around the stream module's own steps; returns the dict they fill (seconds).
    Wraps module globals and SourceFile.copy (the revisions compared with --baseline must have them)."""
    times = {"crc": 0.0, "finite": 0.0, "header": 0.0, "copy": 0.0, "write_other": 0.0, "verify": 0.0, "fsync": 0.0}
    marks = {"first_write": None, "last_write_end": None}
    local = threading.local()
    write_file, copy, verify_file, verify_and_sync = stream.write_file, stream.SourceFile.copy, stream.verify_file, stream._verify_and_sync

    def timed_write_file(*args, **kwargs):
        start = time.perf_counter()
        marks["first_write"] = marks["first_write"] or start
        local.entered, local.copied, local.header = start, 0.0, 0.0  # header: until the file's first copy
        try:
            return write_file(*args, **kwargs)
        finally:
            end = time.perf_counter()
            marks["last_write_end"] = end
            times["write_other"] += end - start - local.copied - local.header  # tensors written from memory

    def timed_copy(self, *args, **kwargs):
        start = time.perf_counter()
        if getattr(local, "entered", None) is not None:  # the first copy of a file: what came before is its header
            local.header = start - local.entered
            times["header"] += local.header
            local.entered = None
        try:
            return copy(self, *args, **kwargs)
        finally:
            took = time.perf_counter() - start
            times["copy"] += took
            local.copied += took

    def timed_verify_file(*args, **kwargs):
        start = time.perf_counter()
        try:
            return verify_file(*args, **kwargs)
        finally:
            local.verified = time.perf_counter() - start
            times["verify"] += local.verified

    def timed_verify_and_sync(*args, **kwargs):
        start = time.perf_counter()
        local.verified = 0.0
        try:
            return verify_and_sync(*args, **kwargs)
        finally:
            times["fsync"] += time.perf_counter() - start - local.verified

    def timed(name, function):  # the loader's integrity checks (part of setup)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[name] += time.perf_counter() - start
        return wrapper

    checkpoint.verify_zip, checkpoint.is_finite = timed("crc", checkpoint.verify_zip), timed("finite", checkpoint.is_finite)
    stream.write_file, stream.SourceFile.copy = timed_write_file, timed_copy
    stream.verify_file, stream._verify_and_sync = timed_verify_file, timed_verify_and_sync
    return {"times": times, "marks": marks, "local": local}


def child(method: str, src: str, dst: str, group_width: int, baseline: str | None) -> None:
    started = time.perf_counter()
    if baseline:  # the converters package as it is at the baseline revision
        sys.path.insert(0, baseline)
    import torch  # noqa: F401

    import converters
    from converters import checkpoint, stream
    from converters.plan import rename_key

    assert Path(stream.__file__).is_relative_to(baseline or ROOT), stream.__file__
    case = bench_case(group_width)
    converters.plan_of(case)  # the key map, traced on a small meta model: a fixed cost, like the imports
    probe = instrument(stream, checkpoint) if method != "recipe" else None
    imports = time.perf_counter() - started
    print(json.dumps({"imported": imports, "baseline_kb": rss_anon_kb()}), flush=True)
    sys.stdin.readline()  # the parent samples memory from here on

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    breakdown = None
    if method == "recipe":
        loaded = torch.load(src, map_location="cpu", weights_only=True)  # everything in memory
        model = loaded["classy_state_dict"]["base_model"]["model"]
        flat = {f"{part}.{k}": v for part in ("trunk", "heads") for k, v in model[part].items()}
        renames = converters.plan_of(case).renames
        converted = {rename_key(k, renames): v for k, v in flat.items()}
        Path(dst).mkdir()
        out = Path(dst) / "pytorch_model.bin"
        torch.save(converted, out)
        outputs = [out]
    else:
        streamed = stream.convert_file(case, src, dst)
        converted_at = time.perf_counter()
        outputs = [p for p in Path(dst).iterdir()]
        assert not streamed.problems
    for path in outputs:  # durable, like `sync DST` after cp (the stream has synced its shards already)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    work = time.perf_counter() - t0
    if probe:
        marks = probe["marks"]
        breakdown = {"setup": marks["first_write"] - t0, **probe["times"],
                     "tail": converted_at - marks["last_write_end"], "final_fsync": t0 + work - converted_at}
    print(json.dumps({"work": work, "cpu": cpu_seconds() - cpu0, "breakdown": breakdown}), flush=True)


# --------------------------------------------------------------------------- the parent: machine state


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0])
    return values


def dirty_settings() -> str:
    names = sorted(p.name for p in Path("/proc/sys/vm").glob("dirty*"))
    return " ".join(f"{n}={Path('/proc/sys/vm', n).read_text().strip()}" for n in names)


def page_reporting() -> str:
    for word in Path("/proc/cmdline").read_text().split():
        if word.startswith("page_reporting."):
            return word
    return "no page_reporting setting on the kernel command line"


_libc = ctypes.CDLL(None, use_errno=True)


def resident_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache (mincore on a read-only shared mapping of it)."""
    size, page = path.stat().st_size, mmap.PAGESIZE
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    vector = (ctypes.c_ubyte * ((size + page - 1) // page))()
    with open(path, "rb") as f:
        base = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    if base in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap {path}")
    try:
        if _libc.mincore(ctypes.c_void_p(base), ctypes.c_size_t(size), vector):
            raise OSError(ctypes.get_errno(), f"mincore {path}")
    finally:
        _libc.munmap(ctypes.c_void_p(base), ctypes.c_size_t(size))
    return sum(v & 1 for v in vector) * page


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def prepare(src: Path, drain_kb: int, drain_timeout: float, settle: float) -> dict:
    """The same state before every timed step (see the module docstring); returns what it found."""
    evict(src)
    time.sleep(settle)
    subprocess.run(["sync"], check=True)  # last, so what was dirtied during the settle is written too
    started, info = time.perf_counter(), meminfo()
    while info["Dirty"] + info["Writeback"] > drain_kb and time.perf_counter() - started < drain_timeout:
        time.sleep(0.05)
        info = meminfo()
    return {"drain_s": time.perf_counter() - started, "dirty_kb": info["Dirty"], "writeback_kb": info["Writeback"],
            "free_mb": info["MemFree"] // 1024, "source_resident": resident_bytes(src), "settings": dirty_settings(),
            "load": Path("/proc/loadavg").read_text().split()[0]}


def watch(proc: subprocess.Popen, state: dict, anon: bool) -> None:
    """Poll `proc` to its end every 2 ms: peak RssAnon (when `anon`), peak Dirty / Writeback (every 20 ms)."""
    polls = 0
    while proc.poll() is None:
        try:
            if anon:
                state["peak_kb"] = max(state["peak_kb"], rss_anon_kb(proc.pid))
            if polls % 10 == 0:
                info = meminfo()
                state["peak_dirty_kb"] = max(state["peak_dirty_kb"], info["Dirty"])
                state["peak_writeback_kb"] = max(state["peak_writeback_kb"], info["Writeback"])
        except (FileNotFoundError, ProcessLookupError):
            break
        polls += 1
        time.sleep(0.002)


def run_cp(src: Path, dst: Path) -> dict:
    state = {"peak_dirty_kb": 0, "peak_writeback_kb": 0}
    t0, cpu0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    for command in (["cp", str(src), str(dst)], ["sync", str(dst)]):  # sync FILE: fsync of the output
        proc = subprocess.Popen(command)
        watch(proc, state, anon=False)
        if proc.wait():
            raise RuntimeError(f"{command} failed (exit {proc.returncode})")
        state.setdefault("copied", time.perf_counter() - t0)
    work = time.perf_counter() - t0
    return {"work": work, "cpu": cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0, "imported": 0.0, "peak_mb": None,
            "breakdown": {"copy": state["copied"], "fsync": work - state["copied"]},
            "peak_dirty_kb": state["peak_dirty_kb"], "peak_writeback_kb": state["peak_writeback_kb"]}


def run_python(method: str, src: Path, dst: Path, group_width: int, baseline: Path | None) -> dict:
    command = [sys.executable, __file__, "--child", "stream" if method == "baseline" else method, str(src), str(dst),
               "--group-width", str(group_width)] + (["--baseline-dir", str(baseline)] if method == "baseline" else [])
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    ready = json.loads(proc.stdout.readline())
    state = {"peak_kb": ready["baseline_kb"], "peak_dirty_kb": 0, "peak_writeback_kb": 0}
    proc.stdin.write("go\n")
    proc.stdin.flush()
    watch(proc, state, anon=True)
    out = proc.stdout.read().strip().splitlines()
    if proc.wait() != 0 or not out:
        raise RuntimeError(f"{method} failed (exit {proc.returncode})")
    done = json.loads(out[-1])
    return {"work": done["work"], "cpu": done["cpu"], "imported": ready["imported"], "peak_mb": (state["peak_kb"] - ready["baseline_kb"]) / 1024,
            "breakdown": done["breakdown"], "peak_dirty_kb": state["peak_dirty_kb"], "peak_writeback_kb": state["peak_writeback_kb"]}


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def spread(values) -> str:
    return f"{min(values):.2f} / {median(values):.2f} / {max(values):.2f}"


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the parent: rounds and report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp", help="where the synthetic file and outputs go (deleted after)")
    parser.add_argument("--group-width", type=int, default=GROUP_WIDTH, help="sets the size: 266 gives about 2.6 GB")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (at least 5); each times every method once")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between the preparation and a timed step")
    parser.add_argument("--drain-mb", type=float, default=32.0, help="Dirty + Writeback to wait for before a timed step")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to wait at most for the drain")
    parser.add_argument("--baseline", metavar="REV", help="also time the converters package as it is at this git revision")
    parser.add_argument("--recipe", action="store_true", help="also time the original script's recipe (about 10 s a round)")
    parser.add_argument("--busy-core", action="store_true", help="keep one other core busy for the whole run (a spinning process)")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "SRC", "DST"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, group_width=args.group_width, baseline=args.baseline_dir)
    if args.rounds < 5:
        parser.error("--rounds: at least 5 (a min / median / max of fewer says little)")

    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=args.dir)).resolve()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy_core else None
    try:
        if busy:
            print(f"one other core kept busy by process {busy.pid} (a spinning loop) for the whole run")
        methods, baseline = ["cp", "stream"], None
        if args.baseline:  # the whole converters package at that revision (the stream calls the loader, the plan, ...)
            baseline = work / "baseline"
            baseline.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline, "converters"], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
            methods.append("baseline")
        if args.recipe:
            methods.append("recipe")
        src = work / "seer_synthetic.torch"
        size = make_checkpoint(src, args.group_width)
        print(f"synthetic SEER-layout checkpoint: {size / 1e9:.2f} GB, widths {bench_case(args.group_width).config['hidden_sizes']}")
        assert size >= 2.5e9, "the benchmark needs at least 2.5 GB: raise --group-width"
        if baseline:
            print(f"baseline: the converters package at {args.baseline} "
                  f"({subprocess.run(['git', 'rev-parse', '--short', args.baseline], cwd=ROOT, capture_output=True, text=True).stdout.strip()})")
        print(f"write-back settings: {dirty_settings()}; {page_reporting()}")
        print(f"before each step: sync, Dirty + Writeback drained below {args.drain_mb:g} MB, source evicted "
              f"(posix_fadvise DONTNEED, checked with mincore), {args.settle:g} s settle")
        runs = {m: [] for m in methods}
        settings = set()
        for r in range(args.rounds):
            order = methods[r % len(methods):] + methods[:r % len(methods)]  # alternating: who goes first moves each round
            steps = []
            for method in order:
                dst = work / f"out-{method}"
                before = prepare(src, int(args.drain_mb * 1024), args.drain_timeout, args.settle)
                settings.add(before["settings"])
                result = run_cp(src, dst) if method == "cp" else run_python(method, src, dst, args.group_width, baseline)
                result["before"] = before
                runs[method].append(result)
                remove(dst)
                steps.append(f"{method} {result['work']:.2f} s, cpu {result['cpu']:.2f} s "
                             f"[load {before['load']}, drained in {before['drain_s']:.1f} s, "
                             f"Dirty {before['dirty_kb'] / 1024:.0f} MB Writeback {before['writeback_kb'] / 1024:.0f} MB "
                             f"MemFree {before['free_mb'] / 1024:.1f} GB, source resident {before['source_resident'] >> 20} MiB; "
                             f"peak Dirty {result['peak_dirty_kb'] / 1024:.0f} MB Writeback {result['peak_writeback_kb'] / 1024:.0f} MB]")
            ratios = "  ".join(f"{m}/cp {runs[m][-1]['work'] / runs['cp'][-1]['work']:.2f}" for m in methods if m != "cp")
            print(f"round {r + 1}: {ratios}\n  " + "\n  ".join(steps), flush=True)
        if len(settings) > 1:
            print(f"write-back settings changed during the run: {sorted(settings)}")

        print(f"\nbreakdown, seconds, median over {args.rounds} rounds (verify and fsync run in the verifier thread, "
              "beside the copies of the next shard; tail = after the last copy until the conversion returned)")
        for method in methods:
            if method == "recipe":
                continue
            parts = runs[method][0]["breakdown"]
            cells = ", ".join(f"{part} {median([rr['breakdown'][part] for rr in runs[method]]):.2f}" for part in parts)
            print(f"  {method:8} work {median([rr['work'] for rr in runs[method]]):.2f}: {cells}")

        print(f"\nper-round ratios over {args.rounds} rounds, min / median / max")
        print(f"{'method':8} {'work s (median)':>15} {'/ cp per round':>20} {'import+trace s':>15} {'peak anon over baseline MB':>27}")
        ratio = {m: [a["work"] / c["work"] for a, c in zip(runs[m], runs["cp"])] for m in methods}
        for method in methods:
            rs = runs[method]
            peak = median([x["peak_mb"] for x in rs])
            print(f"{method:8} {median([x['work'] for x in rs]):15.2f} {spread(ratio[method]):>20} "
                  f"{median([x['imported'] for x in rs]):15.2f} {'-' if peak is None else f'{peak:.0f}':>27}")
        print("cpu seconds per round (user + system of the method's processes, the stream's threads included): "
              + "; ".join(f"{m} " + ", ".join(f"{x['cpu']:.2f}" for x in rs) for m, rs in runs.items()))
        print("seconds per round: " + "; ".join(f"{m} " + ", ".join(f"{x['work']:.2f}" for x in rs) for m, rs in runs.items()))
        print(f"stream/cp per round: {', '.join(f'{x:.2f}' for x in ratio['stream'])}; min / median / max {spread(ratio['stream'])}")
        cpu_ratio = {m: [a["cpu"] / c["cpu"] for a, c in zip(runs[m], runs["cp"])] for m in methods if m != "cp"}
        for method, values in cpu_ratio.items():
            print(f"{method}/cp cpu per round: {', '.join(f'{x:.2f}' for x in values)}; min / median / max {spread(values)}")
        print(f"stream/cp = {median(ratio['stream']):.2f}, stream/cp cpu = {median(cpu_ratio['stream']):.2f}, "
              f"peak_anon_over_baseline_mb = {median([x['peak_mb'] for x in runs['stream']]):.0f}")
    finally:
        if busy:
            busy.kill()
            busy.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
