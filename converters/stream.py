"""Streaming conversion for checkpoints too large to hold in memory (RegNet SEER 10B: ~40 GB).

The original file is memory-mapped (`torch.load(mmap=True, weights_only=True)`): its tensors are
pages of the file, never anonymous memory. The plan renames them without touching data, and they
are written shard by shard into safetensors files (a shard never exceeds `shard_bytes` unless one
tensor alone does: it then gets a shard of its own), with transformers' index JSON when there is
more than one shard. A tensor's bytes go file to file in the kernel (`os.copy_file_range`, as
`cp` does) when its place in the source file is known, else from memory. Each shard, once
written, is read back through safetensors and checked, bit for bit with dtype and shape, then
synced to disk, while the next shard is written. A tensor whose bytes are one member of the source
zip is checked against that member's CRC-32 record: one read checks both the copy and the source
file, so `convert_file` loads the source without the loader's own CRC pass and does it, and the
non-finite scan, here; other tensors are compared with the source tensors as torch loaded them.
Output goes to a staging folder renamed into place only when complete and verified: an
interrupted or failed save leaves no partial output.
"""

from __future__ import annotations

import errno
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from . import checkpoint, compat
from .case import Case
from .memory import nbytes
from .metrics import max_abs_diff

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
SHARD_PATTERN = "model{suffix}.safetensors"  # huggingface_hub's: model.safetensors, model-00001-of-00002.safetensors
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB (256 MiB measured no faster on the 2.6 GB benchmark)


class StreamError(RuntimeError):
    pass


@dataclass
class Streamed:
    folder: Path
    files: list[str]  # shard file names, in order
    tensors: int  # tensors written and verified
    bytes: int  # total tensor bytes
    index: dict | None = None  # the index JSON written (None: a single file)
    problems: list[str] = field(default_factory=list)


# safetensors dtype names
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
          torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


class SourceFile:
    """Where the tensors of a memory-mapped torch zip file lie in that file, so the kernel copies
    their bytes file to file (`os.copy_file_range`, as `cp` does) instead of page-faulting them
    through the mapping. torch maps the whole file once and each storage is a slice of it at its
    record's offset; the mapping's start is found from the two, and used only when every storage
    lands on a record. Tensors it cannot place are written from memory; all are verified afterwards."""

    def __init__(self, path, tensors: Mapping[str, torch.Tensor]):
        self.path, self.fd, self.base, self.members = str(path), None, None, {}
        try:
            reader = torch._C.PyTorchFileReader(self.path)
            offsets = sorted(reader.get_record_offset(n) for n in reader.get_all_records() if n.startswith("data/"))
        except (RuntimeError, AttributeError):
            return  # not a zip checkpoint (safetensors, old format): write from memory
        starts, records = sorted({t.untyped_storage().data_ptr() for t in tensors.values()}), set(offsets)
        # the file may hold storages beyond these tensors (other entries): try each record as the first
        base = next((starts[0] - o for o in offsets if all(p - starts[0] + o in records for p in starts)), None) if starts else None
        if base is not None:
            self.base, self.size = base, os.path.getsize(self.path)
            self.fd = os.open(self.path, os.O_RDONLY)
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger readahead: copies follow file order
            self.members = checkpoint.zip_members(self.path)  # data start -> member (name, size, CRC-32)

    def offset(self, tensor: torch.Tensor) -> int | None:
        if self.base is None or not tensor.is_contiguous() or tensor.device.type != "cpu":
            return None
        at = tensor.data_ptr() - self.base
        return at if 0 <= at and at + nbytes(tensor) <= self.size else None

    def member(self, tensor: torch.Tensor) -> zipfile.ZipInfo | None:
        """The zip member whose data is exactly `tensor`'s bytes (its CRC-32 record then checks them)."""
        at = self.offset(tensor)
        info = self.members.get(at) if at is not None else None
        return info if info is not None and info.file_size == nbytes(tensor) else None

    # copy_file_range refuses some pairs of files (measured here: EXDEV from a checkpoint on one
    # file system to an output on another); those bytes then go through a buffer, as cp does.
    REFUSED = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
    BUFFER = 16 << 20
    in_kernel = True

    def copy(self, out_fd: int, key: str, start: int, position: int, left: int) -> None:
        while left:
            # One kernel copy of the whole tensor: asking the disk ahead (posix_fadvise WILLNEED per
            # 16 MiB step) measured slower here (bench_stream, 5 rounds: median 1.35 x cp, 1.25 without).
            copied = self._copy_in_kernel(out_fd, start, position, left) if self.in_kernel else None
            if copied is None:
                chunk = os.pread(self.fd, min(left, self.BUFFER), start)
                copied = os.pwrite(out_fd, chunk, position) if chunk else 0
            if not copied:
                raise StreamError(f"{self.path}: the file ends inside {key}")
            start, position, left = start + copied, position + copied, left - copied

    def _copy_in_kernel(self, out_fd: int, start: int, position: int, left: int) -> int | None:
        try:
            return os.copy_file_range(self.fd, out_fd, left, start, position)
        except OSError as e:
            if e.errno not in self.REFUSED:
                raise
            self.in_kernel = False  # for the rest of this file: the kernel will refuse it again
            return None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)


def write_file(path: Path, tensors: Mapping[str, torch.Tensor], source: SourceFile | None = None) -> None:
    """One safetensors file: the header, then the tensors' bytes, widest dtype first (aligned).
    Bytes are copied in the source file's order, so reading it stays sequential."""
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())
    header, at = {"__metadata__": {"format": "pt"}}, 0
    for key in order:
        t = tensors[key]
        header[key] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + nbytes(t)]}
        at += nbytes(t)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    data = 8 + len(raw)
    starts = {k: source.offset(tensors[k]) if source else None for k in order}
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.flush()
        for key in sorted(order, key=lambda k: (starts[k] is None, starts[k] or 0)):
            t, start, position = tensors[key], starts[key], data + header[key]["data_offsets"][0]
            if start is None:  # from memory: a non-contiguous tensor costs one copy of itself
                f.seek(position)
                f.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
                f.flush()
                continue
            source.copy(f.fileno(), key, start, position, nbytes(t))


def write(state: Mapping[str, torch.Tensor], folder: Path, shard_bytes: int = DEFAULT_SHARD_BYTES,
          source: SourceFile | None = None, written=lambda name, keys: None) -> Streamed:
    """Write `state` as safetensors shards (+ index) into an existing `folder`, one shard at a time;
    `written(name, keys)` is called after each shard (the save verifies it while the next is written).
    The grouping, the file names and the index are huggingface_hub's, as `save_pretrained` writes them."""
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(dict(state), filename_pattern=SHARD_PATTERN, max_shard_size=shard_bytes)
    # Written in the order of the source, which the memory-mapped original is read in: huggingface_hub
    # numbers a tensor larger than a shard before the shard it interrupts.
    position = {key: i for i, key in enumerate(state)}
    for name, keys in sorted(split.filename_to_tensors.items(), key=lambda item: min(map(position.get, item[1]))):
        keys = sorted(keys, key=position.get)
        write_file(folder / name, {k: state[k] for k in keys}, source)
        written(name, keys)
    index = None
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return Streamed(folder, list(split.filename_to_tensors), len(split.tensor_to_filename), sum(nbytes(t) for t in state.values()), index)


@dataclass
class SourceChecks:
    """The loader's integrity checks, done by the save on the bytes it writes (`save(check_source=True)`)."""
    members: dict[str, zipfile.ZipInfo]  # key -> the source zip member whose data is exactly that tensor's bytes
    corrupt: list[str] = field(default_factory=list)  # members whose bytes (equal to the copy) miss their CRC-32 record
    non_finite: list[str] = field(default_factory=list)  # keys holding NaN or Inf


def crc32(tensor: torch.Tensor) -> int:
    return checkpoint.crc32(memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))


def verify_file(path: Path, keys, expected: Mapping[str, torch.Tensor], checks: SourceChecks | None = None) -> list[str]:
    """Each of `keys` read back from `path` (memory-mapped: no anonymous memory) against its source:
    with `checks`, against its zip member's CRC-32 when it has one (no second read of the source;
    compared with the source only when the sums differ, to tell a bad copy from a corrupt source),
    and scanned for NaN / Inf."""
    from safetensors import safe_open

    problems, name = [], Path(path).name
    with safe_open(str(path), "pt") as f:
        present = set(f.keys())
        for key in keys:
            if key not in present:
                problems.append(f"{name}: {key} listed in the index but not in the file")
            elif key in expected:
                written, source = f.get_tensor(key), expected[key]
                member = checks.members.get(key) if checks else None
                if written.dtype != source.dtype or written.shape != source.shape:
                    problems.append(f"{name}: {key} is {written.dtype} {tuple(written.shape)}, source {source.dtype} {tuple(source.shape)}")
                    continue
                if member is not None and crc32(written) == member.CRC:
                    pass  # the recorded bytes: the copy and the source file checked in one read
                elif not torch.equal(written, source):
                    diff = max_abs_diff(written, source) if written.is_floating_point() else None
                    problems.append(f"{name}: {key} differs from the source (max abs diff {diff})")
                elif member is not None:  # copied faithfully from a source that differs from its record
                    checks.corrupt.append(member.filename)
                if checks and not checkpoint.is_finite(written):
                    checks.non_finite.append(key)
    return problems + [f"{name}: {key} in the file but not in the index" for key in sorted(present - set(keys))]


def _verify_and_sync(path: Path, keys, expected, checks: SourceChecks | None = None) -> list[str]:
    problems = verify_file(path, keys, expected, checks)
    with open(path, "rb") as f:  # durable before the folder is renamed into place
        os.fsync(f.fileno())
    return problems


def verify(folder: Path, expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Every problem between what `folder` holds and `expected`: keys missing or extra (in the index
    and in the files), and each tensor read back from its file against its source, bit for bit."""
    folder = Path(folder)
    weight_map = _weight_map(folder)
    problems = _index_problems(weight_map, expected)
    for name, keys in _by_file(weight_map).items():
        problems += verify_file(folder / name, keys, expected)
    return problems


def _weight_map(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    if (folder / INDEX).is_file():
        return json.loads((folder / INDEX).read_text())["weight_map"]
    with safe_open(str(folder / SINGLE), "pt") as f:
        return dict.fromkeys(f.keys(), SINGLE)


def _index_problems(weight_map: Mapping[str, str], expected) -> list[str]:
    return [f"missing from the output: {k}" for k in expected if k not in weight_map] + [
        f"not in the source: {k}" for k in weight_map if k not in expected]


def _by_file(weight_map: Mapping[str, str]) -> dict[str, list[str]]:
    by_file: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        by_file.setdefault(name, []).append(key)
    return by_file


def save(case: Case, original: Mapping[str, torch.Tensor], folder: Path, shard_bytes: int = DEFAULT_SHARD_BYTES,
         source_path=None, on_shard=None, check_source: bool = False) -> Streamed:
    """Convert `original` (memory-mapped from `source_path`, or in memory) with the case plan into
    `folder` (created, or empty): config.json and shards, each verified against the source while
    the next is written; `on_shard(name)` after each shard is written (progress). Raises StreamError
    on any problem. `check_source`: `original` was loaded from `source_path` with
    `load(checks=False)`, and the loader's checks are done here instead, on the bytes written (the
    CRC-32 of each member whose data a tensor is, the members no tensor covers read for theirs, NaN /
    Inf in every tensor written), raising the loader's CheckpointError."""
    from concurrent.futures import ThreadPoolExecutor

    from .core import build_config, convert

    if check_source and not source_path:
        raise ValueError("check_source: the checks read the source file, pass source_path")
    converted, coverage = convert(case, original)
    if not coverage.ok:
        raise StreamError(f"{case.id}: key coverage failed, nothing written:\n{coverage.describe()}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):  # old shards beside new ones would make a model of both
        raise StreamError(f"{case.id}: {folder} is not empty: streaming writes only into an empty folder")
    config = build_config(case)
    config.architectures = [case.model_class]
    floating = {t.dtype for t in converted.values() if t.is_floating_point()}
    if len(floating) == 1:  # the weights' dtype, kept (fp16/bf16 originals stay so), as save_pretrained records it
        compat.set_config_dtype(config, floating.pop())
    config.save_pretrained(folder)
    source = SourceFile(source_path, original) if source_path else None
    checked, checks = [], None
    try:
        # Each written shard is verified, then synced to disk, while the next one is written.
        with ThreadPoolExecutor(1) as verifier:
            if check_source:
                checks = SourceChecks({k: m for k, t in converted.items() if (m := source.member(t)) is not None})
                if checkpoint.is_zip_checkpoint(source_path):  # the members no tensor's check covers
                    covered = {m.filename for m in checks.members.values()}
                    checked.append(verifier.submit(lambda: checkpoint.verify_zip(Path(source_path), case.id, skip=covered) or []))

            def written(name, keys):
                checked.append(verifier.submit(_verify_and_sync, folder / name, keys, converted, checks))
                if on_shard:
                    on_shard(name)

            streamed = write(converted, folder, shard_bytes, source, written=written)
    except (StreamError, OSError) as e:  # ENOSPC, a truncated source, ...: which case, which files
        raise StreamError(f"{case.id}: streaming {source_path or 'the converted state'} into {folder} failed: {e}") from e
    finally:
        if source:
            source.close()
    streamed.problems = _index_problems(_weight_map(folder), converted) + [p for job in checked for p in job.result()]
    if checks and checks.corrupt:
        raise checkpoint.corrupt_error(case.id, source_path, checks.corrupt[0])
    if checks and checks.non_finite:  # named as in the source file, as the loader names them
        names = {id(t): k for k, t in original.items()}
        raise checkpoint.non_finite_error(case.id, source_path, [names.get(id(converted[k]), k) for k in checks.non_finite])
    if streamed.problems:
        raise StreamError(f"{case.id}: {folder}: the written weights do not match the source, "
                          f"{len(streamed.problems)} problems:\n" + "\n".join(streamed.problems[:50]))
    return streamed


def convert_file(case: Case, path, destination, shard_bytes: int = DEFAULT_SHARD_BYTES) -> Streamed:
    """Original file -> `destination` folder, streamed: memory-mapped source, staged output, verified,
    then renamed into place. Nothing is left at `destination` (or in staging) unless all succeeded."""
    from . import atomic
    from .core import load_original

    destination = Path(destination)
    if destination.exists():
        raise atomic.OutputExists(f"{case.id}: {destination} exists and is not overwritten")
    original = load_original(case, path, mmap=True, checks=False).state  # save checks the source as it writes
    atomic.remove_stale_staging(destination.parent)  # left by a killed conversion, as --save does
    with atomic.terminate_as_interrupt():  # SIGTERM too
        staging = atomic.staging_dir(destination.parent, destination.name)
        try:
            streamed = save(case, original, staging, shard_bytes, source_path=path, check_source=True)
            atomic.publish(staging, destination)
        except BaseException:  # KeyboardInterrupt too: an interrupted save leaves nothing behind
            atomic.discard(staging)
            raise
    streamed.folder = destination
    return streamed
