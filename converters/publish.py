"""Publish a saved, validated conversion folder to the Hugging Face Hub, in one commit.

    python -m converters.publish out/<case id> my-org/<hub name>

The folder is what the harness saved (`validation.json` is the evidence: its checks must satisfy the
policy the save applied, `converters.policy`);
random-weight conversions are refused unless asked for. The token comes from huggingface_hub's
usual sources (`HF_TOKEN`, `hf auth login`) and is never printed: error text raised from here has
it scrubbed. A failed push leaves the folder as it was and says what to run again.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from . import policy
from .quote import quote
from .record import checks_from_json

DEFAULT_ENDPOINT = "https://huggingface.co"


class PushError(RuntimeError):
    """The push did not happen (or not completely): the local folder is intact. `retry` is the
    command that pushes it again."""

    def __init__(self, message: str, retry: str | None = None):
        super().__init__(message)
        self.retry = retry


class PushRefused(PushError):
    """The folder must not be pushed: no validation record, a check that did not pass, or random weights."""


@dataclass(frozen=True)
class Pushed:
    repo_id: str
    url: str  # the repo's page
    commit: str  # id of the one commit that holds the folder
    commit_url: str


def push(folder, repo_id: str, token: str | None = None, endpoint: str | None = None,
         allow_random: bool = False, private: bool | None = None) -> Pushed:
    """Create `repo_id` if absent and commit every file of `folder` to it in one commit, with a
    commit message naming the case and its validation result."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder).resolve()
    validation = evidence(folder, allow_random)
    api = HfApi(endpoint=endpoint, token=token)
    retry = retry_command(folder, repo_id, api.endpoint, allow_random and validation["original"]["weights"] != "pretrained")
    title, description = commit_message(validation)
    try:
        # create_commit, not upload_folder: with hf_xet installed upload_folder commits in batches
        # (by file count, size and a 5-minute interval), and a folder must land whole or not at all.
        operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
                      for path in files(folder)]
        api.create_repo(repo_id, exist_ok=True, private=private)
        info = api.create_commit(repo_id, operations=operations, commit_message=title, commit_description=description)
    except Exception as e:  # any failure on the way (HTTP, network, file) becomes one message with the retry
        secret = token or _stored_token()
        raise PushError(f"push of {folder} to {repo_id} at {api.endpoint} failed: {scrub(_describe(e), secret)}\n"
                        f"The local save is intact: {folder}\nTo push it again, run: {retry}", retry) from None
    return Pushed(repo_id, str(info.repo_url), info.oid, info.commit_url)


def whoami(token: str | None = None, endpoint: str | None = None) -> str:
    """The user a push would act as; raises PushError (token scrubbed) when there is no usable token."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        return api.whoami()["name"]
    except LocalTokenNotFoundError:
        raise PushError("no Hugging Face token found: set HF_TOKEN or run `hf auth login`") from None
    except Exception as e:
        raise PushError(f"the token could not be checked at {api.endpoint}: {scrub(_describe(e), token or _stored_token())}") from None


def evidence(folder: Path, allow_random: bool = False) -> dict:
    """The folder's validation record, if it may be pushed; else PushRefused saying why."""
    path = folder / "validation.json"
    if not path.is_file():
        raise PushRefused(f"{folder} has no validation.json: only folders the harness saved (every check passed) are pushed")
    try:
        validation = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PushRefused(f"{path} cannot be read ({e}): not pushed") from None
    try:
        checks = checks_from_json(validation["checks"])
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise PushRefused(f"{path} holds no valid check results ({quote(e)}): not pushed") from None
    bad = policy.refusal(checks)  # the save's own policy, on the fields it recorded
    if bad:
        raise PushRefused(f"{folder} did not pass validation ({bad}): not pushed")
    if validation["original"]["weights"] != "pretrained" and not allow_random:
        raise PushRefused(f"{folder} holds a conversion of random weights ({validation['original']['source']}): "
                          "not pushed unless asked for (allow_random=True, or --allow-random on the command line)")
    return validation


def files(folder: Path) -> list[Path]:
    """Every file of the folder, hidden ones (staging leftovers, tool caches) excepted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def commit_message(validation: dict) -> tuple[str, str]:
    """A title naming the case and the validation result, and one line per check."""
    checks = checks_from_json(validation["checks"])
    counts = {}
    for check in checks.values():
        counts[check.status] = counts.get(check.status, 0) + 1
    result = ", ".join(f"{n} {status}" for status, n in counts.items())
    title = f"Add {validation['case']}: validation {result} ({validation['original']['weights']} weights)"
    lines = []
    for name, check in checks.items():
        line = f"- {name}: {check.status}"
        if check.max_abs_diff is not None:
            line += f", max abs diff {check.max_abs_diff:.3g}"
            if check.atol is not None:
                line += f" (tolerance {check.atol:.3g})"
        lines.append(line)
    sha256 = validation["original"].get("sha256")
    description = (f"Converted from {validation['original']['source']}{f' (sha256 {sha256})' if sha256 else ''} to {validation['model_class']} "
                   f"and validated by the vision port harness (see validation.json):\n" + "\n".join(lines))
    return title, description


def retry_command(folder: Path, repo_id: str, endpoint: str, allow_random: bool = False) -> str:
    """The exact command that pushes the folder again (the token comes from the same sources)."""
    env = f"HF_ENDPOINT={shlex.quote(endpoint)} " if endpoint.rstrip("/") != DEFAULT_ENDPOINT else ""
    return env + shlex.join([sys.executable, "-m", "converters.publish", str(folder), repo_id]
                            + (["--allow-random"] if allow_random else []))


def scrub(text: str, secret: str | None) -> str:
    """Error text without the token (it could only get there by echo, but nothing here prints it)
    and without URL query strings (upload URLs carry signatures)."""
    if secret:
        text = text.replace(secret, "<token>")
    text = re.sub(r"(?i)(bearer\s+)\S+", r"\1<token>", text)
    return re.sub(r"(https?://[^\s'\"?]+)\?[^\s'\"]+", r"\1?<query removed>", text)


def _describe(error: BaseException) -> str:
    """An error and its causes on one line (the client wraps HTTP errors in RuntimeError)."""
    from huggingface_hub.errors import HfHubHTTPError

    parts = []
    while error is not None and len(parts) < 5:
        lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("For more information")]
        parts.append(f"{type(error).__name__}: {'; '.join(lines)}")
        if isinstance(error, HfHubHTTPError):
            break  # it carries the server's message; its causes repeat it
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return ", caused by ".join(parts)


def _stored_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m converters.publish", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder the harness saved (with validation.json)")
    parser.add_argument("repo_id", help="ORG/name")
    parser.add_argument("--allow-random", action="store_true", help="push a conversion of random weights")
    parser.add_argument("--private", action="store_true", help="create the repo private if it does not exist")
    args = parser.parse_args(argv)
    try:
        pushed = push(args.folder, args.repo_id, allow_random=args.allow_random, private=args.private or None)
    except PushError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"pushed {args.folder} to {pushed.url} (commit {pushed.commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
