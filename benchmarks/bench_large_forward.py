"""Forward passes of a model larger than the memory it may use: every check of a RegNet SEER case
whose weights are several times the memory limit of the process that runs them.

    .venv/bin/python benchmarks/bench_large_forward.py [--limit-mb 1024] [--group-width 320]
                                                       [--image 128] [--dir /tmp] [--json PATH]

Builds a synthetic checkpoint in vissl's SEER layout (the 10B's depths, parts and width
proportions [2, 4, 11, 28] x group width; 320 gives 3.5 GiB of fp32 weights), declares it as a case
of a family package outside the repository (`VISION_PORT_FAMILIES`, as a user's own family would
be), and runs the harness on it in a child process placed in a new cgroup v1 memory cgroup whose
limit is `--limit-mb` (this machine has no swap):

    pytest tests/test_conversions.py -k CASE --checkpoint CASE=FILE --save OUT --report REPORT

The checkpoint's page cache is dropped first, so the child's reads of it are charged to its own
cgroup. Prints each check's status and wall time (setup included: the first check to need the
conversion or the model pays for it), the child's peak anonymous memory (RssAnon, sampled every
10 ms: memory-mapped weights are file pages, reclaimed under the limit, not anonymous), the
cgroup's failcnt and OOM kills, and ends with `weights/limit = R, peak_anon_mb = M`.
Needs root and the cgroup v1 memory controller at /sys/fs/cgroup/memory: elsewhere it exits 2
saying so. Everything it writes is under a temporary folder of --dir, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.support.memory_limit import cgroup_v1_available, run_limited

ROOT = Path(__file__).resolve().parents[1]
CASE_ID = "regnet_seer_larger_than_memory"
PACKAGE = "larger_than_memory_families"

# A family module outside the repository: the SEER in1k case at another width and image size.
# It imports the SEER module, not the `converters` facade: the registry is importing it.
FAMILY_MODULE = '''\
from dataclasses import replace

from converters.case import IMAGENET_MEAN, IMAGENET_STD
from converters.evaluation import Evaluation
from converters.families import regnet_seer

GROUP_WIDTH, SIZE = {group_width}, {image}
BASE = next(c for c in regnet_seer.CASES if c.model_class == "RegNetForImageClassification")
CASE = replace(
    BASE, id="{case_id}", family="{case_id}", hub_name="{case_id}", url=None, random_config=None,
    config={{**BASE.config, "hidden_sizes": [m * GROUP_WIDTH for m in (2, 4, 11, 28)],
             "groups_width": GROUP_WIDTH, "image_size": SIZE}},
    processor={{**BASE.processor, "size": {{"shortest_edge": SIZE}}, "crop_size": {{"height": SIZE, "width": SIZE}}}},
)


# SEER's evaluation (short side, bicubic; centre crop; ImageNet mean/std) at SIZE
EVALUATION = Evaluation(source="benchmark: SEER's evaluation at SIZE", crop_size=SIZE, shortest_edge=SIZE,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD)


FAMILY = replace(regnet_seer.FAMILY, name="{case_id}", cases=(CASE,), mutants=(), evaluation=EVALUATION)
'''


def make_family(work: Path, group_width: int, image: int) -> None:
    package = work / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / f"{CASE_ID}.py").write_text(FAMILY_MODULE.format(group_width=group_width, image=image, case_id=CASE_ID))


def make_checkpoint(path: Path) -> int:
    """The case's synthetic original in vissl's file structure; returns its weight bytes. Its pages
    are then evicted from the page cache (they would be charged to this process's cgroup)."""
    import torch

    import converters
    from converters.families import regnet_seer

    case = converters.get(CASE_ID)
    state = converters.synthetic_original(case)
    weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
    torch.save(regnet_seer.vissl_file(state), path)
    del state
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return weight_bytes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-mb", type=int, default=1024, help="the memory cgroup's limit (MiB)")
    parser.add_argument("--group-width", type=int, default=320, help="SEER group width: weights grow with its square")
    parser.add_argument("--image", type=int, default=128, help="image side (the case's processor and crop)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoint and outputs are written")
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if reason := cgroup_v1_available():
        print(f"bench_large_forward: {reason}; nothing measured", file=sys.stderr)
        return 2
    limit = args.limit_mb << 20
    work = Path(tempfile.mkdtemp(prefix="bench-large-forward-", dir=args.dir))
    try:
        make_family(work, args.group_width, args.image)
        sys.path.insert(0, str(work))
        os.environ["VISION_PORT_FAMILIES"] = PACKAGE
        checkpoint = work / "seer_larger_than_memory.torch"
        started = time.perf_counter()
        weight_bytes = make_checkpoint(checkpoint)
        print(f"checkpoint: {checkpoint.stat().st_size / 2**30:.2f} GiB file, {weight_bytes / 2**30:.2f} GiB of weights "
              f"(group width {args.group_width}, {args.image} px), made in {time.perf_counter() - started:.1f} s; "
              f"memory limit {args.limit_mb} MiB", flush=True)
        report = work / "report.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("PYTEST_XDIST_WORKER", None)
        command = [sys.executable, "-m", "pytest", "tests/test_conversions.py", "-q", "-p", "no:randomly", "-k", CASE_ID,
                   "--checkpoint", f"{CASE_ID}={checkpoint}", "--save", str(work / "out"), "--report", str(report),
                   "--basetemp", str(work / "basetemp")]
        figures = run_limited(command, env, limit, work / "pytest.log", cwd=ROOT)
        log = (work / "pytest.log").read_text()
        entry = json.loads(report.read_text())["cases"].get(CASE_ID, {}) if report.is_file() else {}
        checks = entry.get("checks", {})
        figures |= {"work": str(work), "weight_bytes": weight_bytes, "limit_bytes": limit, "weights_per_limit": weight_bytes / limit,
                    "checks": {name: {"status": r["status"], "seconds": entry.get("check_seconds", {}).get(name),
                                      "max_abs_diff": r.get("max_abs_diff"), "reason": r.get("reason")}
                               for name, r in checks.items()},
                    "block_parity": checks.get("logits", {}).get("block_parity"),
                    "saved": (json.loads(report.read_text()).get("saved", {}) if report.is_file() else {}).get(CASE_ID)}
        print(f"{'check':16} {'status':8} {'wall s':>8}  max abs diff")
        for name, r in figures["checks"].items():
            diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3g}"
            print(f"{name:16} {r['status']:8} {r['seconds'] or 0:8.1f}  {diff}" + (f"  ({r['reason']})" if r["reason"] else ""))
        parity = figures["block_parity"] or {}
        print(f"per-block parity: {len(parity.get('blocks', []))} blocks, worst {parity.get('worst_block')}, "
              f"first over tolerance {parity.get('first_block_over')}")
        print(f"pytest exit {figures['returncode']} in {figures['wall_s']:.1f} s; saved: {figures['saved']}; cgroup: "
              f"max usage {figures['cgroup_max_usage'] / 2**20:.0f} MiB (page cache included), failcnt {figures['failcnt']}, "
              f"OOM kills {figures['oom_kills']}")
        if figures["returncode"] != 0:
            print(log[-4000:])
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        print(f"weights/limit = {figures['weights_per_limit']:.2f}, peak_anon_mb = {figures['peak_anon_kb'] / 1024:.0f}")
        return 0 if figures["returncode"] == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
