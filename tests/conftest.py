"""Shared small fixtures (no napari here: pytest-qt's make_napari_viewer comes from napari)."""

from __future__ import annotations

import pytest

TINY_CLASSES = ["normal", "pneumonia", "covid"]
TINY_SIZE = 32


@pytest.fixture(scope="session")
def tiny_bundle():
    """An untrained simple_cnn, 1 channel, 3 classes, 32 px, seeded; do not mutate it."""
    import torch

    import napari_gradcam as ng

    torch.manual_seed(0)
    return ng.build_model("simple_cnn", TINY_CLASSES, in_channels=1, input_size=TINY_SIZE, device="cpu")


@pytest.fixture(scope="session")
def tiny_bundle_rgb():
    """An untrained simple_cnn, 3 channels, 3 classes, 32 px, seeded; do not mutate it."""
    import torch

    import napari_gradcam as ng

    torch.manual_seed(1)
    return ng.build_model("simple_cnn", TINY_CLASSES, in_channels=3, input_size=TINY_SIZE, device="cpu")


@pytest.fixture
def torch_one_thread():
    """One torch thread for tiny models: two threads on two busy cores can be 100x slower (OpenMP spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch_one_thread_module():
    """One torch thread for a whole module of tiny-model tests (use via ``pytestmark``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A saved untrained simple_cnn, 1 channel, 64 px, the three TINY_CLASSES (modules may define their own)."""
    import torch

    from napari_gradcam import build_model, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(build_model("simple_cnn", TINY_CLASSES, 1, 64), path)
    return path


@pytest.fixture(scope="module")
def other_model_file(tmp_path_factory):
    """A second saved model with other classes (cat, dog), for switching models mid-run."""
    from napari_gradcam import build_model, save_model

    path = tmp_path_factory.mktemp("model2") / "other.safetensors"
    save_model(build_model("simple_cnn", ["cat", "dog"], 1, 32), path)
    return path
