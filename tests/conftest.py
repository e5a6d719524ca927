import os
from pathlib import Path

import pytest

# Tests never touch the network and stay small on two cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); the golden checks need it")
    return SHARED


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread on a shared two-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def songs_dir(tmp_path_factory) -> Path:
    """Six tone "songs" with lyrics files beside them (tests/support.py)."""
    from support import make_catalogue

    return make_catalogue(tmp_path_factory.mktemp("songs"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny RECAP model trained a few steps on those songs, once per session."""
    from support import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model"))
