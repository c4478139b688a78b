"""Safe loading of original checkpoints.

Pickles are opened with `weights_only=True` only, plus an explicit allow-list of harmless
classes a family declares (e.g. `argparse.Namespace` in BEiT-style files). Every failure is a
`CheckpointError` naming the case and the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from zlib_ng.zlib_ng import crc32  # zlib's CRC-32 values at ~10x its speed (25.5 vs 2.1-2.5 GB/s measured here)

from .quote import listing, quote

MAX_DEPTH = 64  # nested entries: vissl's files go 5 deep; a file 5 000 deep is not a checkpoint


class CheckpointError(Exception):
    def __init__(self, case_id: str, path: os.PathLike | str, reason: str):
        self.case_id, self.path, self.reason = case_id, str(path), reason
        super().__init__(f"{case_id}: {path}: {reason}")


class NotMappable(CheckpointError):
    """The file cannot be memory-mapped (the legacy non-zip format, a file system without mmap):
    it can still be read into memory."""


def opened(path) -> tuple[int, int]:
    """What identifies the file a mapping was made of: (size, mtime in ns)."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def ensure_unchanged(case_id: str, path, when_opened: tuple[int, int]) -> None:
    """A memory-mapped file is still the one that was opened; else its tensors would read other
    bytes, or kill the process with SIGBUS where it was truncated."""
    try:
        now = opened(path)
    except OSError as e:
        raise CheckpointError(case_id, path, f"gone since it was memory-mapped ({e.strerror}): no forward pass was run") from None
    if now != when_opened:
        (size, mtime), (new_size, new_mtime) = when_opened, now
        what = f"size {size} -> {new_size} bytes" if new_size != size else "modified"
        raise CheckpointError(case_id, path, f"changed since it was memory-mapped ({what}, mtime {mtime} -> {new_mtime} ns): "
                              "its tensors are pages of that file, so no forward pass was run on them")


@dataclass
class Loaded:
    state: dict[str, torch.Tensor]
    path: str
    unwrapped: str | None = None  # the entry the weights came from, e.g. "model"
    ignored: list[str] = field(default_factory=list)  # other top-level entries, e.g. "model_ema"


def sha256(path: os.PathLike | str, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_zip_checkpoint(path) -> bool:
    return zipfile.is_zipfile(path)


def load(
    path: os.PathLike | str,
    case_id: str,
    unwrap: Iterable[str] = (),
    allow: Iterable[type] = (),
    mmap: bool = False,
    checks: bool = True,
) -> Loaded:
    """Load a `.pth`/`.pt` (torch.save), `.safetensors` or `.npz` (numpy, as JAX originals save) file; take the first `unwrap` entry present.
    `checks=False` leaves out the integrity checks that read every byte (a zip's CRC-32 records,
    non-finite values) for a caller that does them itself on its own read of the bytes (the
    streaming writer: `converters.stream.save(check_source=True)`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(case_id, path, "no such file")
    if path.is_dir():
        raise CheckpointError(case_id, path, "is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(case_id, path, "empty file")

    if path.suffix == ".safetensors":
        obj = _load_safetensors(path, case_id)
    elif path.suffix == ".npz":
        if mmap:
            raise NotMappable(case_id, path, "an .npz archive cannot be memory-mapped (numpy maps .npy files only)")
        obj = _load_npz(path, case_id, crc=checks)
    else:
        obj = _load_pickle(path, case_id, tuple(allow), mmap, crc=checks)

    loaded = Loaded(state=obj, path=str(path))
    if isinstance(obj, Mapping):
        for name in unwrap:  # an entry, or a dotted path of entries ("classy_state_dict.base_model.model")
            found, ignored = _entry(obj, name.split("."))
            if isinstance(found, Mapping):
                loaded.unwrapped, loaded.ignored = name, ignored
                obj = _flatten(found, case_id, path)  # nested parts (vissl's trunk and heads) become dotted keys
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(case_id, path, f"holds a {type(obj).__name__}, expected a state dict")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        hint = f" (expected the weights under one of {list(unwrap)})" if unwrap else ""
        raise CheckpointError(case_id, path, f"{len(not_tensors)} entries that are not tensors: {listing(not_tensors, limit=20, count=False)}{hint}")
    # Memory-mapped (streamed) files too: the scan reads file-backed pages, no anonymous memory.
    non_finite = sorted(k for k, v in obj.items() if not is_finite(v)) if checks else []
    if non_finite:  # the checks would compare NaN with NaN and point the wrong way
        raise non_finite_error(case_id, path, non_finite)
    # A non-contiguous view (bit-equal values) would send CPU kernels down another path: outputs
    # 2.1e-06 off the same weights saved and reloaded (contiguous). One copy of such a tensor only.
    loaded.state = {k: v if v.is_contiguous() else v.contiguous() for k, v in obj.items()}
    return loaded


def non_finite_error(case_id: str, path, keys) -> CheckpointError:
    return CheckpointError(case_id, path, f"non-finite values (NaN or Inf) in {len(keys)} tensors: {listing(sorted(keys), limit=20, count=False)}")


def corrupt_error(case_id: str, path, member: str) -> CheckpointError:
    return CheckpointError(case_id, path, f"corrupt torch checkpoint: {member} does not match its CRC-32 record "
                                          "(the file changed after it was written; fetch or copy it again)")


def is_finite(tensor: torch.Tensor) -> bool:
    """NaN propagates into min and max, an Inf is one of them: one pass, no tensor-sized mask
    (isfinite().all() is 15x slower on a 2.6 GB file)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return all(bool(torch.isfinite(x)) for x in torch.aminmax(tensor))


def _entry(obj: Mapping, path: list[str]):
    """The entry at `path` in nested mappings (None if absent), and the entries passed by on the way."""
    ignored = []
    for depth, name in enumerate(path):
        if not isinstance(obj, Mapping) or name not in obj:
            return None, []
        prefix = ".".join(path[:depth])
        ignored += sorted(f"{prefix}.{k}" if prefix else str(k) for k in obj if k != name)
        obj = obj[name]
    return obj, ignored


def _flatten(obj: Mapping, case_id: str, path) -> dict:
    """Nested entries as dotted keys, iteratively; deeper than MAX_DEPTH is an error, not a RecursionError."""
    out, stack = {}, [("", iter(obj.items()))]  # in file order, as a recursion would go
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            if isinstance(value, Mapping):
                if len(stack) >= MAX_DEPTH:
                    raise CheckpointError(case_id, path, f"entries nested more than {MAX_DEPTH} deep (under "
                                          f"{quote(prefix + str(key), 80)}): not a state dict")
                stack.append((f"{prefix}{key}.", iter(value.items())))
                break
            out[f"{prefix}{key}"] = value
        else:
            stack.pop()
    return out


def _load_safetensors(path: Path, case_id: str):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(case_id, path, f"not a readable safetensors file ({quote(e)})") from None


NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float arrays: what a weight file holds


def _load_npz(path: Path, case_id: str, crc: bool = True) -> dict[str, torch.Tensor]:
    """A JAX original (`np.savez` of its flattened parameters, keys such as `Transformer/encoderblock_0/
    LayerNorm_0/scale`), read with numpy and `allow_pickle=False`: an object array (a pickle inside
    the archive) is refused unread, as is any array of another kind than numbers."""
    import numpy as np

    if not is_zip_checkpoint(path):
        raise CheckpointError(case_id, path, "not an .npz archive (no zip directory: truncated, or another format)")
    if crc:
        verify_zip(path, case_id)
    state = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                array = archive[key]
                if array.dtype.kind not in NUMERIC_KINDS:
                    raise CheckpointError(case_id, path, f"entry {quote(key, 120)} holds {quote(str(array.dtype), 40)} values, "
                                                         "not numbers: not a weight file")
                state[key] = torch.from_numpy(np.ascontiguousarray(array))
    except ValueError as e:
        if "allow_pickle" in str(e):  # numpy's words for an object array
            raise CheckpointError(case_id, path, "refused to unpickle an object array: an .npz is read with allow_pickle=False, "
                                                 "which never runs code from a checkpoint") from None
        raise CheckpointError(case_id, path, f"not a readable .npz archive ({quote(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(case_id, path, f"not a readable .npz archive ({quote(e)})") from None
    return state


def verify_zip(path: Path, case_id: str, chunk: int = 1 << 24, skip=frozenset()) -> None:
    """Check every member of a zip checkpoint against its CRC-32 record: torch.load does not, and a
    flipped byte in a tensor would load and pass. Streamed, little memory, any size: stored members
    (all of torch.save's) are read in file order into one 16 MiB buffer, the next 32 MiB asked of
    the disk (posix_fadvise WILLNEED) before each sum, so reading and summing overlap. zipfile's
    testzip (1 MiB reads through its member objects, no read-ahead hint) took 8.7 s on the 2.6 GB
    streaming benchmark's cold file, this 2.3 s (a plain 16 MiB read-and-sum loop: 6.4-6.9 s).
    `skip`: names of members checked otherwise (the streaming writer checks those it copies)."""
    bad = None
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
            fd = f.fileno()
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            buffer = memoryview(bytearray(chunk))  # one buffer for every read: no allocation per chunk
            for info in sorted(archive.infolist(), key=lambda i: i.header_offset):
                if info.filename not in skip and not _crc_matches(archive, fd, info, buffer):
                    bad = info.filename
                    break
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(case_id, path, f"corrupt torch checkpoint ({quote(e)})") from None
    if bad is not None:
        raise corrupt_error(case_id, path, bad)


def zip_members(path) -> dict[int, zipfile.ZipInfo]:
    """The stored (uncompressed) members of a zip file by the offset where their data starts."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        return {_data_start(f.fileno(), info): info for info in archive.infolist() if info.compress_type == zipfile.ZIP_STORED}


def _data_start(fd: int, info: zipfile.ZipInfo) -> int:
    local = bytearray(30)  # the local header: its name and extra field lengths
    if os.preadv(fd, [local], info.header_offset) < 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {info.filename}")
    return info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")


def _crc_matches(archive: zipfile.ZipFile, fd: int, info: zipfile.ZipInfo, buffer: memoryview) -> bool:
    if info.compress_type != zipfile.ZIP_STORED:  # zipfile inflates and checks it at the member's end
        try:
            with archive.open(info) as member:
                while member.read(len(buffer)):
                    pass
        except zipfile.BadZipFile as e:
            if "CRC" in str(e):
                return False
            raise
        return True
    start, crc, left = _data_start(fd, info), 0, info.file_size
    while left:
        os.posix_fadvise(fd, start + len(buffer), 2 * len(buffer), os.POSIX_FADV_WILLNEED)  # the disk reads ahead while we sum
        read = os.preadv(fd, [buffer[:min(len(buffer), left)]], start)
        if not read:
            raise EOFError(f"the file ends inside {info.filename}")
        crc = crc32(buffer[:read], crc)
        start, left = start + read, left - read
    return crc == info.CRC


def _load_pickle(path: Path, case_id: str, allow: tuple, mmap: bool, crc: bool = True):
    head = path.open("rb").read(2)
    if head == b"PK" and not is_zip_checkpoint(path):
        raise CheckpointError(case_id, path, "truncated torch checkpoint (zip archive without its directory)")
    if head != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(case_id, path, "not a torch checkpoint (neither torch.save's zip format nor a pickle)")
    if mmap and not is_zip_checkpoint(path):
        raise NotMappable(
            case_id,
            path,
            "old (non-zip) torch serialisation cannot be memory-mapped; re-save it once with "
            "torch.save(torch.load(path, weights_only=True), new_path) (zip is the default since torch 1.6)",
        )
    if head == b"PK" and crc:
        verify_zip(path, case_id)
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "an object weights_only loading does not allow"
        raise CheckpointError(
            case_id, path, f"refused to unpickle {what}: weights_only loading never runs code from a checkpoint"
        ) from None
    except RecursionError:  # a pickle nested thousands deep: one error, not a traceback per check
        raise CheckpointError(case_id, path, "objects nested too deep to load: not a checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if mmap and "unable to mmap" in first:  # torch's words when the kernel refuses (ENODEV: FUSE, some network mounts)
            raise NotMappable(case_id, path, f"cannot be memory-mapped: its file system does not support mmap ({first}); "
                                  "copy it to a local disk and pass that copy with --checkpoint") from None
        raise CheckpointError(case_id, path, f"truncated or not a torch checkpoint ({quote(first)})") from None
