"""Streaming conversion of a large checkpoint vs `cp` and vs the original script's recipe.

    .venv/bin/python benchmarks/bench_stream.py [--gb 2.6] [--dir /tmp]

Builds a synthetic checkpoint in RegNet SEER's vissl layout (the 10B's depths and parts at about a
quarter of its widths, random tensors, >= 2.5 GB), then times, each in its own process:

- cp:     `cp SRC DST` then `sync DST` (the floor: read and write the bytes once);
- recipe: the original script's way: torch.load the whole file, rename every key, torch.save;
- stream: ours, `converters.stream.convert_file`: memory-mapped source, 1 GiB safetensors shards
          + index, every tensor read back and compared with its source, staged and renamed in.

Every method ends with its outputs synced to disk. The page cache is dropped before each method
(`/proc/sys/vm/drop_caches` when writable, else the source file's pages are evicted with
posix_fadvise(DONTNEED), which any user may do). A Python method's time is its work after its
imports and the key map's trace (printed separately: neither grows with the file); its memory is the peak
anonymous memory (RssAnon, sampled by this process every 2 ms) above its own baseline after the
imports. File-backed pages of memory-mapped files are reclaimable and not anonymous.
The synthetic file and all outputs are deleted at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def rss_anon_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def child(method: str, src: str, dst: str, group_width: int) -> None:
    started = time.perf_counter()
    import torch  # noqa: F401

    import converters
    from converters import stream
    from converters.plan import rename_key

    case = bench_case(group_width)
    converters.plan_of(case)  # the key map, traced on a small meta model: a fixed cost, like the imports
    imports = time.perf_counter() - started
    print(json.dumps({"imported": imports, "baseline_kb": rss_anon_kb()}), flush=True)
    sys.stdin.readline()  # the parent samples memory from here on

    t0 = time.perf_counter()
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
        outputs = [p for p in Path(dst).iterdir()]
        assert not streamed.problems
    for path in outputs:  # durable, like `sync DST` after cp
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    print(json.dumps({"work": time.perf_counter() - t0}), flush=True)


# --------------------------------------------------------------------------- the parent


def drop_cache(src: Path) -> str:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "cold (drop_caches)"
    except OSError:
        fd = os.open(src, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "cold source (drop_caches not permitted: source pages evicted with posix_fadvise DONTNEED)"


def run_cp(src: Path, dst: Path) -> dict:
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync", str(dst)], check=True)
    return {"work": time.perf_counter() - t0, "imported": 0.0, "peak_mb": None}


def run_python(method: str, src: Path, dst: Path, group_width: int) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", method, str(src), str(dst), "--group-width", str(group_width)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    ready = json.loads(proc.stdout.readline())
    peak = baseline = ready["baseline_kb"]
    proc.stdin.write("go\n")
    proc.stdin.flush()
    while proc.poll() is None:
        try:
            peak = max(peak, rss_anon_kb(proc.pid))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.002)
    out = proc.stdout.read().strip().splitlines()
    if proc.wait() != 0 or not out:
        raise RuntimeError(f"{method} failed (exit {proc.returncode})")
    return {"work": json.loads(out[-1])["work"], "imported": ready["imported"], "peak_mb": (peak - baseline) / 1024}


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp", help="where the synthetic file and outputs go (deleted after)")
    parser.add_argument("--group-width", type=int, default=GROUP_WIDTH, help="sets the size: 266 gives about 2.6 GB")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all three methods; medians are reported")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, group_width=args.group_width)

    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=args.dir))
    try:
        src = work / "seer_synthetic.torch"
        size = make_checkpoint(src, args.group_width)
        print(f"synthetic SEER-layout checkpoint: {size / 1e9:.2f} GB, widths {bench_case(args.group_width).config['hidden_sizes']}")
        assert size >= 2.5e9, "the benchmark needs at least 2.5 GB: raise --group-width"
        runs, caches = {"cp": [], "recipe": [], "stream": []}, set()
        for _ in range(args.rounds):  # interleaved: a shared machine's load drifts
            for method in runs:
                dst = work / f"out-{method}"
                caches.add(drop_cache(src))
                runs[method].append(run_cp(src, dst) if method == "cp" else run_python(method, src, dst, args.group_width))
                shutil.rmtree(dst, ignore_errors=True) if dst.is_dir() else dst.unlink(missing_ok=True)
        results = {m: {k: median([r[k] for r in rs]) for k in rs[0]} for m, rs in runs.items()}
        cp = results["cp"]["work"]
        seconds = {m: ", ".join(f"{r['work']:.2f}" for r in rs) for m, rs in runs.items()}
        print(f"page cache: {'; '.join(sorted(caches))}")
        print(f"median of {args.rounds} rounds; seconds per round: " + "; ".join(f"{m} {v}" for m, v in seconds.items()))
        print(f"{'method':8} {'work s':>8} {'/ cp':>6} {'import+trace s':>15} {'peak anon over baseline MB':>27}")
        for method, r in results.items():
            peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
            print(f"{method:8} {r['work']:8.2f} {r['work'] / cp:6.2f} {r['imported']:15.2f} {peak:>27}")
        print(f"stream/cp = {results['stream']['work'] / cp:.2f}, peak_anon_over_baseline_mb = {results['stream']['peak_mb']:.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
