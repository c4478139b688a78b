"""The loopback Hub (fixtures/hub.py) against the real huggingface_hub client: a pushed folder comes
back byte for byte, a transformers model reloads with equal tensors, and bad tokens, existing repos
and failed uploads fail the way the client reports them on the real Hub."""

from __future__ import annotations

from tests.support.hub import require_hub_client_1x

require_hub_client_1x()  # before the imports that differ in huggingface_hub 0.x

import json
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

from tests.support.hub import hub_server  # noqa: F401  (the fixture; conftest.py already exists)

REPO = "tester/tiny"


def make_folder(path: Path, n_weights: int = 1) -> Path:
    """config.json, README.md with card metadata, and n random safetensors files (LFS on the Hub)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden": 8}))
    (path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    gen = torch.Generator().manual_seed(0)
    for i in range(n_weights):
        name = "model.safetensors" if i == 0 else f"model-{i}.safetensors"
        tensors = {"w": torch.randn(8, 4, generator=gen), "b": torch.randn(8, generator=gen)}
        save_file(tensors, str(path / name))
    return path


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ".cache" not in p.relative_to(root).parts}  # local_dir keeps metadata there


def commit_ops(hub, repo_id=REPO) -> list[list[dict]]:
    """The ndjson bodies of every commit request received, parsed."""
    return [[json.loads(line) for line in r.body.splitlines()]
            for r in hub.requests_to(f"/api/models/{repo_id}/commit/", "POST")]


def test_upload_folder_round_trips_byte_identical(hub_server, tmp_path):
    hub = hub_server
    src = make_folder(tmp_path / "src")
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    assert api.whoami()["name"] == hub.user

    api.create_repo(REPO, exist_ok=False)
    info = api.upload_folder(repo_id=REPO, folder_path=src, commit_message="push tiny")

    # One commit on top of the Hub's initial one: regular files inline, the weights through LFS.
    repo = hub.repos[REPO]
    assert [c.title for c in repo.commits] == ["initial commit", "push tiny"]
    assert info.oid == repo.head.oid
    (ops,) = commit_ops(hub)
    assert ops[0] == {"key": "header", "value": {"summary": "push tiny", "description": ""}}
    assert sorted((op["key"], op["value"]["path"]) for op in ops[1:]) == [
        ("file", "README.md"), ("file", "config.json"), ("lfsFile", "model.safetensors")]
    assert len(hub.requests_to("/__lfs/", "PUT")) == 1
    assert repo.head.files["model.safetensors"].lfs and not repo.head.files["config.json"].lfs

    # The read API agrees with what was committed.
    expected = files_under(src)
    assert set(api.list_repo_files(REPO)) == set(expected) | {".gitattributes"}
    model_info = api.model_info(REPO)
    assert model_info.sha == repo.head.oid
    lfs_sibling = next(s for s in model_info.siblings if s.rfilename == "model.safetensors")
    assert lfs_sibling.lfs.size == len(expected["model.safetensors"])

    # Download the whole snapshot, and one file through the cache: byte-identical.
    local = Path(snapshot_download(REPO, endpoint=hub.endpoint, local_dir=tmp_path / "dl"))
    downloaded = files_under(local)
    assert set(downloaded) == set(expected) | {".gitattributes"}
    for name, data in expected.items():
        assert downloaded[name] == data, name
    cached = hf_hub_download(REPO, "model.safetensors", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert Path(cached).read_bytes() == expected["model.safetensors"]
    assert Path(cached).parent.name == repo.head.oid  # the client filed it under X-Repo-Commit


def test_token_travels_only_in_the_authorization_header(hub_server, tmp_path):
    hub = hub_server
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=make_folder(tmp_path / "src", n_weights=2))
    snapshot_download(REPO, endpoint=hub.endpoint, token=hub.token, local_dir=tmp_path / "dl")

    authorised = [r for r in hub.requests
                  if any(k.lower() == "authorization" and v == f"Bearer {hub.token}" for k, v in r.headers)]
    assert len(authorised) >= 6  # create, preupload, LFS batch, commit, info, tree, resolve...: not vacuous
    leaks = [(r.method, r.path, where) for r in hub.requests for where, text in [
        ("path", unquote(r.path)), ("body", r.body.decode("latin-1")),
        *((f"header {k}", v) for k, v in r.headers if k.lower() != "authorization")] if hub.token in text]
    assert leaks == []


def test_transformers_model_reloads_with_equal_tensors(hub_server, tmp_path):
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    hub = hub_server
    torch.manual_seed(0)
    config = ConvNextV2Config(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_labels=3)
    model = ConvNextV2ForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "src")

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=tmp_path / "src")
    # from_pretrained has no endpoint argument and HF_ENDPOINT is read at import: fetch, then load locally.
    local = snapshot_download(REPO, endpoint=hub.endpoint, local_dir=tmp_path / "dl")
    reloaded = ConvNextV2ForImageClassification.from_pretrained(local).eval()

    assert reloaded.config.num_labels == 3
    expected, got = model.state_dict(), reloaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    # Logits only to rounding: the same weights loaded from safetensors give ~3e-8 differences even
    # without any hub in between (measured), so bitwise equality belongs to the tensors above.
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).logits, reloaded(pixels).logits, rtol=0, atol=1e-6)


def test_rejected_token_raises_the_clients_auth_error(hub_server, tmp_path):
    hub = hub_server
    bad = HfApi(endpoint=hub.endpoint, token="hf_not_a_valid_token")
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as err:
        bad.whoami()
    assert err.value.response.status_code == 401

    with pytest.raises(HfHubHTTPError) as err:
        bad.create_repo(REPO)
    assert err.value.response.status_code == 401
    assert not isinstance(err.value, RepositoryNotFoundError)  # a bad token, not a missing repo
    assert REPO not in hub.repos

    hub.create_repo(REPO)
    head = hub.repos[REPO].head.oid
    with pytest.raises(HfHubHTTPError) as err:
        bad.upload_folder(repo_id=REPO, folder_path=make_folder(tmp_path / "src"))
    assert err.value.response.status_code == 401
    assert hub.repos[REPO].head.oid == head and len(hub.repos[REPO].commits) == 1


def test_create_existing_repo_raises_unless_exist_ok(hub_server):
    hub = hub_server
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    url = api.create_repo(REPO, exist_ok=False)
    assert url.repo_id == REPO
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO, exist_ok=False)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert len(hub.repos[REPO].commits) == 1  # neither call touched the existing repo


def test_missing_repo_revision_and_file_raise_the_clients_typed_errors(hub_server, tmp_path):
    hub = hub_server
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/absent")
    hub.create_repo(REPO)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "absent.json", endpoint=hub.endpoint, cache_dir=tmp_path)


@pytest.mark.parametrize("fault", ["second-lfs-put", "commit"])
def test_failed_push_raises_and_leaves_no_commit(hub_server, tmp_path, fault):
    hub = hub_server
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPO)
    before = [c.oid for c in hub.repos[REPO].commits]
    src = make_folder(tmp_path / "src", n_weights=2)
    if fault == "second-lfs-put":
        hub.fail_after_puts = 1
    else:
        hub.fail_commit = True

    with pytest.raises((HfHubHTTPError, RuntimeError)) as err:
        api.upload_folder(repo_id=REPO, folder_path=src)
    cause = err.value if isinstance(err.value, HfHubHTTPError) else err.value.__cause__
    assert isinstance(cause, HfHubHTTPError) and cause.response.status_code == hub.fail_status

    repo = hub.repos[REPO]
    assert [c.oid for c in repo.commits] == before and repo.branches["main"] == before[-1]
    assert hub.lfs_puts == 2  # the failure came mid-push, not before it started
    if fault == "second-lfs-put":
        assert len(repo.lfs_objects) == 1 and commit_ops(hub) == []  # one object landed, no commit sent
    else:
        assert len(repo.lfs_objects) == 2 and len(commit_ops(hub)) == 1

    # Once the fault is cleared, the same push goes through in one commit.
    hub.fail_after_puts, hub.fail_commit = None, False
    api.upload_folder(repo_id=REPO, folder_path=src)
    assert len(repo.commits) == len(before) + 1
    assert repo.files["model-1.safetensors"] == (src / "model-1.safetensors").read_bytes()
