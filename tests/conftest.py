"""Fixtures shared across test modules."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny arrays: one thread is as fast, and immune to a loaded machine's thread contention.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
