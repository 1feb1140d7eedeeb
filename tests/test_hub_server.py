"""The real huggingface_hub / transformers clients against the loopback Hub double (tests/hub_server.py)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download

# huggingface_hub's LFS upload passes a file object as `data=`, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
BIG_SIZE = 12 * 1024 * 1024  # above the 10 MiB threshold => uploaded through the LFS protocol


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Fail fast if anything in these tests tries to reach a non-loopback host."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise ConnectionRefusedError(f"test tried to reach non-loopback address {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def api(hub_env):
    return HfApi(endpoint=hub_env, token=os.environ["HF_TOKEN"])


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "upload"
    (root / "weights").mkdir(parents=True)
    (root / "notes.txt").write_text("hello hub\n")
    (root / "weights" / "big.bin").write_bytes(os.urandom(BIG_SIZE))
    return root


def test_whoami_create_repo_and_info(api, hub_server):
    assert api.whoami()["name"] == "user"
    url = api.create_repo("user/empty", repo_type="model", exist_ok=True, private=True)
    assert url == f"{hub_server.url}/user/empty" and url.repo_id == "user/empty"
    assert api.create_repo("user/empty", exist_ok=True).repo_id == "user/empty"  # 409 + exist_ok
    info = api.model_info("user/empty")
    assert SHA_RE.match(info.sha) and info.private
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert api.repo_exists("user/empty") and not api.repo_exists("user/missing")


def test_upload_folder_lfs_and_downloads(api, hub_server, folder):
    api.create_repo("user/data", exist_ok=True)
    commit = api.upload_folder(repo_id="user/data", folder_path=folder, commit_message="add files")
    assert SHA_RE.match(commit.oid)

    assert hub_server.is_lfs("user/data", "weights/big.bin")
    assert not hub_server.is_lfs("user/data", "notes.txt")
    methods_paths = hub_server.requests
    assert ("POST", "/user/data.git/info/lfs/objects/batch") in methods_paths
    assert any(m == "PUT" and p.startswith("/_lfs/upload/") for m, p in methods_paths)
    assert hub_server.read_file("user/data", "weights/big.bin") == (folder / "weights" / "big.bin").read_bytes()

    assert sorted(api.list_repo_files("user/data")) == [".gitattributes", "notes.txt", "weights/big.bin"]
    assert api.file_exists("user/data", "notes.txt") and not api.file_exists("user/data", "nope.txt")
    info = api.model_info("user/data", files_metadata=True)
    assert info.sha == commit.oid
    big = next(s for s in info.siblings if s.rfilename == "weights/big.bin")
    assert big.size == BIG_SIZE and big.lfs.size == BIG_SIZE

    snapshot = Path(snapshot_download("user/data"))
    assert snapshot.name == commit.oid
    for rel in ("notes.txt", "weights/big.bin"):
        assert (snapshot / rel).read_bytes() == (folder / rel).read_bytes()

    local = hf_hub_download("user/data", "notes.txt", endpoint=api.endpoint, force_download=True)
    assert Path(local).read_text() == "hello hub\n"


def test_second_commit_keeps_old_revision(api):
    api.create_repo("user/history", exist_ok=True)
    first = api.upload_file(path_or_fileobj=b"version 1", path_in_repo="file.txt", repo_id="user/history")
    second = api.upload_file(path_or_fileobj=b"version 2", path_in_repo="file.txt", repo_id="user/history")
    assert first.oid != second.oid

    assert Path(hf_hub_download("user/history", "file.txt")).read_bytes() == b"version 2"
    old = hf_hub_download("user/history", "file.txt", revision=first.oid)
    assert Path(old).read_bytes() == b"version 1"
    assert Path(snapshot_download("user/history", revision=first.oid)).name == first.oid

    # Re-uploading identical content is a no-op commit (server-reported oid matches the local one).
    again = api.upload_file(path_or_fileobj=b"version 2", path_in_repo="file.txt", repo_id="user/history")
    assert again.oid == second.oid


def test_model_card_push_to_hub(api, hub_server):
    api.create_repo("user/card", exist_ok=True)
    card = ModelCard("---\nlicense: mit\n---\n# Card\n")
    card.push_to_hub("user/card")
    assert hub_server.read_file("user/card", "README.md") == str(card).encode()
    assert ModelCard.load("user/card").data.license == "mit"


def test_transformers_push_and_from_pretrained(hub_env, hub_server, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    model = transformers.ViTModel(config)
    model.push_to_hub("user/tiny-vit")
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_server.list_files("user/tiny-vit"))
    assert hub_server.is_lfs("user/tiny-vit", "model.safetensors")

    loaded = transformers.ViTModel.from_pretrained("user/tiny-vit", cache_dir=tmp_path / "cache")
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name
