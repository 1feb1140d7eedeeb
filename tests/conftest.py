"""Shared pytest fixtures.

``hub_server``: session-wide :class:`tests.hub_server.LocalHubServer` (loopback-only Hub test double).
``hub_env``: points the real ``huggingface_hub`` / ``transformers`` clients at that server for one test
(environment variables for subprocesses + the import-time constants for this process) and returns its URL.
"""

from __future__ import annotations

import os
import sys

# No network in tests: nothing may be downloaded from the Hub (the hub_env fixture re-enables the client
# for the loopback test server only). Set before transformers/datasets are imported.
for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                     "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_XET": "1"}.items():
    os.environ.setdefault(_key, _value)
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from hub_server import LocalHubServer  # noqa: E402

HUB_TEST_TOKEN = "hf_local_test_token"


@pytest.fixture(scope="session")
def hub_server():
    with LocalHubServer() as server:
        yield server


@pytest.fixture
def hub_env(hub_server, monkeypatch, tmp_path):
    """Route Hub traffic of this test to ``hub_server`` (state reset), with a throw-away HF_HOME."""
    hub_server.reset()
    url = hub_server.url
    hf_home = tmp_path / "hf_home"
    env = {
        "HF_ENDPOINT": url,
        "HF_TOKEN": HUB_TEST_TOKEN,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",  # the double has no Xet storage: force the LFS upload protocol
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)

    # huggingface_hub copies these environment variables into module constants at import time.
    from huggingface_hub import constants, hf_api

    for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
    }.items():
        monkeypatch.setattr(constants, name, value)
    # Module-level helpers (hf_api.upload_file, create_repo, ...) are bound to an HfApi created at import.
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    # transformers caches one HfApi instance (endpoint captured at creation): drop it before and after.
    if "transformers.utils.hub" in sys.modules:
        monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
    yield url
    if "transformers.utils.hub" in sys.modules:
        sys.modules["transformers.utils.hub"]._hf_api = None
