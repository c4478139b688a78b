"""Where original checkpoints come from: the real loaders and their caches.

URL checkpoints go through torch.hub's cache (`$TORCH_HOME/hub/checkpoints/<file name>`) and its
downloader, exactly as `torch.hub.load_state_dict_from_url` would, but are then opened by
`checkpoint.load` (weights_only, allow-lists, errors naming case and path).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .case import Case


class Unavailable(RuntimeError):
    """The real weights cannot be had here; the message says how to provide them."""


def cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to the URL's host be opened quickly? Offline machines answer at once
    or within `timeout`, never hang. HF_HUB_OFFLINE=1 means no."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def how_to_provide(case: Case, part: str | None = None) -> str:
    url = case.extra_files[part] if part else case.url
    option = f"--checkpoint {case.id}{':' + part if part else ''}=PATH"
    if url:
        return f"put the original file at {cache_path(url)} or pass {option}"
    return f"pass {option}"


def original_file(case: Case, download: bool, part: str | None = None) -> Path:
    """The cached original file (or, with `part`, one of `case.extra_files`), downloaded into
    torch.hub's cache first when allowed and needed."""
    url = case.extra_files[part] if part else case.url
    if not url:
        raise Unavailable(f"{case.id}: no URL source; {how_to_provide(case, part)}")
    path = cache_path(url)
    if path.is_file():
        return path
    if not download or not reachable(url):
        raise Unavailable(f"{case.id}: {url} is not cached and not reachable; {how_to_provide(case, part)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(path), progress=False)  # writes a temp file, then renames
    return path
