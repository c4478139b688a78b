"""Where original checkpoints come from: the real loaders and their caches.

URL checkpoints go through torch.hub's cache (`$TORCH_HOME/hub/checkpoints/<file name>`) and its
downloader, exactly as `torch.hub.load_state_dict_from_url` would, but are then opened by
`checkpoint.load` (weights_only, allow-lists, errors naming case and path).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import torch

from .case import Case


class Unavailable(RuntimeError):
    """The real weights cannot be had here; the message says how to provide them."""


def cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


_PROBED: dict[tuple[str, int], bool] = {}  # (host, port) -> answer: one probe per host per process


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to the URL's host be opened quickly? Asked once per host and port in a
    process (every case of a session shares the answer); the name lookup and the connection
    together take at most `timeout`, even where DNS packets are dropped. HF_HUB_OFFLINE=1 means no."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    parsed = urlparse(url)
    where = (parsed.hostname, parsed.port or 443)
    if where not in _PROBED:
        _PROBED[where] = _probe(*where, timeout)
    return _PROBED[where]


def _probe(host: str, port: int, timeout: float) -> bool:
    # getaddrinfo takes no timeout (a resolver that drops packets: 5 s and more per try): it runs in
    # a thread that is given up on, not waited for, once the time is spent.
    deadline = time.monotonic() + timeout
    found: list = []
    resolver = threading.Thread(target=lambda: found.append(_resolve(host, port)), daemon=True, name=f"resolve {host}")
    resolver.start()
    resolver.join(timeout)
    for family, kind, proto, _, address in found[0] if found else ():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.socket(family, kind, proto) as connection:
                connection.settimeout(left)
                connection.connect(address)
                return True
        except OSError:
            continue
    return False


def _resolve(host: str, port: int) -> list:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []


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


HUB = "https://huggingface.co"  # where cases without a URL (timm's pretrained configs) fetch from


def hosts(cases) -> list[str]:
    """Every host the cases' original files come from (the Hub for those without a URL), each once."""
    urls = [url for case in cases for url in (case.url or HUB, *case.extra_files.values())]
    return sorted({f"{urlparse(url).scheme}://{urlparse(url).hostname}" for url in urls})


def main() -> int:
    """`python -m converters.sources`: exit 1 naming every host of the registry's original files
    that cannot be reached (the nightly's first step: fail in seconds rather than skip every case)."""
    import sys

    from .registry import cases

    down = [host for host in hosts(cases()) if not reachable(host, timeout=5)]
    if down:
        print(f"the real weights need the network; cannot reach: {', '.join(down)} (the offline suite is tox -e tf5,tf4)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
