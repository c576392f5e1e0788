"""Fixtures shared across test packages."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module: tiny models gain nothing from threads, and on a busy
    2-core machine they oversubscribe it (tiny codec encoding ran 50x slower). Use it per module with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
