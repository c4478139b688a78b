"""Streaming on real disk layouts: the checkpoint on one file system and the output on another
(a tmpfs this test mounts), a full disk, refused kernel copies, a non-empty output folder and the
staging a killed conversion left. The streamed case comes from the registry, at reduced width."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

import converters
from converters import atomic, checkpoint, memory, stream

CASE = next(c for c in converters.cases() if c.streamed).for_random_weights()
SHARD = 1_000_000  # several shards for a few-MB state


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A zip checkpoint of the case's original layout on the disk /tmp is on."""
    path = tmp_path_factory.mktemp("source") / "original.torch"
    torch.save(converters.synthetic_original(CASE), path)
    return path


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs: another file system than the source's (and one that can fill up)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()

    def mounted(size: str) -> Path:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        return mount

    yield mounted
    subprocess.run(["umount", str(mount)], capture_output=True)


def copies(monkeypatch) -> list:
    """Record how the bytes travelled: ("kernel", n) or ("buffer", n)."""
    calls, real_copy, real_pread = [], os.copy_file_range, os.pread

    def copy_file_range(*args):
        copied = real_copy(*args)
        calls.append(("kernel", copied))
        return copied

    def pread(fd, n, offset):
        chunk = real_pread(fd, n, offset)
        calls.append(("buffer", len(chunk)))
        return chunk

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    monkeypatch.setattr(os, "pread", pread)
    return calls


def test_an_output_on_another_file_system_is_copied_through_a_buffer_and_verified(source, tmpfs, monkeypatch):
    out = tmpfs("64m") / "converted"
    with pytest.raises(OSError) as refused:  # what the kernel says to a copy across file systems
        with open(source, "rb") as a, open(out.parent / "probe", "wb") as b:
            os.copy_file_range(a.fileno(), b.fileno(), 16, 0, 0)
    assert refused.value.errno == errno.EXDEV
    calls = copies(monkeypatch)
    streamed = stream.convert_file(CASE, source, out, shard_bytes=SHARD)
    assert len(streamed.files) > 1 and not streamed.problems and streamed.tensors == len(converters.synthetic_original(CASE))
    assert {how for how, _ in calls} == {"buffer"}, "every byte went through the buffer once the kernel refused"
    assert sum(n for how, n in calls) == streamed.bytes
    assert stream.verify(out, converters.convert(CASE, converters.synthetic_original(CASE))[0]) == []


def test_on_one_file_system_the_kernel_copies(source, tmp_path, monkeypatch):
    calls = copies(monkeypatch)
    streamed = stream.convert_file(CASE, source, tmp_path / "converted", shard_bytes=SHARD)
    assert {how for how, _ in calls} == {"kernel"} and sum(n for _, n in calls) == streamed.bytes


@pytest.mark.parametrize("code", ["EXDEV", "EINVAL", "ENOSYS", "EOPNOTSUPP"])
def test_each_refusal_of_the_kernel_copy_falls_back(source, tmp_path, monkeypatch, code):
    def refuse(*args):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    streamed = stream.convert_file(CASE, source, tmp_path / "converted", shard_bytes=SHARD)
    assert not streamed.problems and streamed.tensors > 0


def test_another_copy_error_stops_the_case_naming_case_and_files(source, tmp_path, monkeypatch):
    def failing(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "copy_file_range", failing)
    out = tmp_path / "out"
    with pytest.raises(stream.StreamError) as failed:
        stream.convert_file(CASE, source, out / "converted", shard_bytes=SHARD)
    message = str(failed.value)
    assert CASE.id in message and str(source) in message and "Input/output error" in message
    assert list(out.iterdir()) == [], "the failed conversion left its staging behind"


def test_a_full_disk_stops_the_case_naming_it_and_leaves_nothing(source, tmpfs):
    mount = tmpfs("1m")  # the state is a few MB
    with pytest.raises(stream.StreamError) as failed:
        stream.convert_file(CASE, source, mount / "converted", shard_bytes=SHARD)
    message = str(failed.value)
    assert CASE.id in message and str(source) in message and "No space left on device" in message
    assert list(mount.iterdir()) == []


def test_save_refuses_a_non_empty_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model-00001-of-00009.safetensors").write_bytes(b"an earlier shard")
    with pytest.raises(stream.StreamError, match="is not empty") as refused:
        stream.save(CASE, converters.synthetic_original(CASE), folder, shard_bytes=SHARD)
    assert CASE.id in str(refused.value) and str(folder) in str(refused.value)
    assert [p.name for p in folder.iterdir()] == ["model-00001-of-00009.safetensors"]


def test_the_staging_a_killed_conversion_left_is_removed_by_the_next(source, tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is gone
    stale = out / f".staging-converted-{dead.pid}-abc123"
    stale.mkdir(parents=True)
    live = atomic.staging_dir(out, "other")  # a conversion still running (it holds the folder's lock): kept
    for folder in (stale, live):
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"half")
    stream.convert_file(CASE, source, out / "converted", shard_bytes=SHARD)
    assert sorted(p.name for p in out.iterdir()) == sorted(["converted", live.name])


# --------------------------------------------------------------------------- memory-mapped sources


def test_a_file_system_without_mmap_gets_a_clear_error(source, monkeypatch):
    """No file system here refuses mmap (FUSE and some network mounts do, with ENODEV), so the
    refusal is made where torch meets it: the mapping of the file, with the error torch raises."""
    def refuse(filename, shared, nbytes):
        raise RuntimeError(f"unable to mmap {nbytes} bytes from file <{filename}>: No such device (19)")

    monkeypatch.setattr(torch.UntypedStorage, "from_file", refuse)
    with pytest.raises(converters.CheckpointError) as caught:
        converters.load_original(CASE, source, mmap=True)
    message = str(caught.value)
    assert message.startswith(f"{CASE.id}: {source}: cannot be memory-mapped: its file system does not support mmap")
    assert "No such device (19)" in message and "--checkpoint" in message
    monkeypatch.undo()
    assert converters.load_original(CASE, source, mmap=True).state  # and without the refusal it maps


def test_a_memory_mapped_file_changed_since_it_was_opened_is_refused(source, tmp_path):
    from converters.checkpoint import ensure_unchanged, opened

    copy = tmp_path / "copy.torch"
    copy.write_bytes(source.read_bytes())
    when_opened = opened(copy)
    ensure_unchanged(CASE.id, copy, when_opened)  # unchanged: nothing to say
    size = copy.stat().st_size
    os.truncate(copy, size // 2)
    with pytest.raises(converters.CheckpointError, match=rf"^{CASE.id}: {copy}: changed since it was memory-mapped "
                                                         rf"\(size {size} -> {size // 2} bytes"):
        ensure_unchanged(CASE.id, copy, when_opened)
    copy.write_bytes(source.read_bytes())  # the same size again, but rewritten: the mtime tells
    os.utime(copy, ns=(when_opened[1] + 1, when_opened[1] + 1))
    with pytest.raises(converters.CheckpointError, match="changed since it was memory-mapped \\(modified"):
        ensure_unchanged(CASE.id, copy, when_opened)
    copy.unlink()
    with pytest.raises(converters.CheckpointError, match="gone since it was memory-mapped"):
        ensure_unchanged(CASE.id, copy, when_opened)


def test_the_memory_a_forward_pass_may_use_is_the_cgroup_limit(tmp_path):
    """Inside a memory cgroup the budget is its limit less the anonymous memory it holds, not the
    machine's MemAvailable (22 GiB here)."""
    import sys

    from tests.support.memory_limit import cgroup_v1_available, run_limited

    if reason := cgroup_v1_available():
        pytest.skip(f"{reason}: elsewhere the budget is MemAvailable or {memory.MEMORY_BUDGET_ENV}")
    env = {k: v for k, v in os.environ.items() if k != memory.MEMORY_BUDGET_ENV}
    code = "from converters import memory; print(memory.available_bytes(), memory.cgroup_headroom())"
    limit = 768 << 20
    figures = run_limited([sys.executable, "-c", code], env, limit, tmp_path / "out.log", timeout=120)
    assert figures["returncode"] == 0, (tmp_path / "out.log").read_text()
    available, headroom = map(int, (tmp_path / "out.log").read_text().split())
    assert available == headroom and 0 < headroom < limit, (available, headroom)
    assert memory.cgroup_headroom() is None or memory.cgroup_headroom() > limit  # this process: not limited so


# --------------------------------------------------------------------------- the source read once


def _flip_inside(path: Path, member) -> None:
    """One bit flipped in the middle of a zip member's data (the file no longer matches its CRC-32)."""
    with open(path, "r+b") as f:
        at = checkpoint.zip_members(path)
        start = next(offset for offset, info in at.items() if info.filename == member.filename)
        f.seek(start + member.file_size // 2)
        byte = f.read(1)[0]
        f.seek(start + member.file_size // 2)
        f.write(bytes([byte ^ 0x01]))


def test_a_corrupt_source_is_refused_by_the_streamed_conversion_reading_it_once(source, tmp_path, monkeypatch):
    """convert_file checks the source's CRC-32 records on the bytes it copied: the tensors' members are
    not read a second time by a zip check, and a flipped byte stops the case, leaving nothing."""
    import zipfile

    corrupt = tmp_path / "corrupt.torch"
    corrupt.write_bytes(source.read_bytes())
    largest = max(zipfile.ZipFile(corrupt).infolist(), key=lambda info: info.file_size)
    _flip_inside(corrupt, largest)
    zip_checked, real = [], checkpoint._crc_matches
    monkeypatch.setattr(checkpoint, "_crc_matches",
                        lambda archive, fd, info, buffer: zip_checked.append(info.filename) or real(archive, fd, info, buffer))
    out = tmp_path / "out"
    with pytest.raises(converters.CheckpointError, match=rf"{CASE.id}: .*corrupt.torch: corrupt .*{largest.filename}.*CRC-32"):
        stream.convert_file(CASE, corrupt, out / "converted", shard_bytes=SHARD)
    assert list(out.iterdir()) == [], "the refused conversion left its staging behind"
    assert zip_checked and not any("/data/" in name for name in zip_checked), zip_checked  # pickle, version, ...: no tensor's member

    good = stream.convert_file(CASE, source, tmp_path / "good", shard_bytes=SHARD)  # the intact file still streams
    assert not good.problems


def test_a_non_finite_source_is_refused_by_the_streamed_conversion_naming_the_key(tmp_path):
    state = converters.synthetic_original(CASE)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[1] = float("nan")
    torch.save(state, tmp_path / "nan.torch")
    out = tmp_path / "out"
    with pytest.raises(converters.CheckpointError, match=rf"{CASE.id}: .*nan.torch: non-finite values .* in 1 tensors: {key}$"):
        stream.convert_file(CASE, tmp_path / "nan.torch", out / "converted", shard_bytes=SHARD)
    assert list(out.iterdir()) == []
