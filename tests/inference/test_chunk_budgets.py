"""The memory readers behind the RAM budget."""

import resource

import numpy as np
import pytest

from nnunet_ctorg.inference.chunk_budgets import current_rss_gb, peak_rss_gb


def test_rss_readers_are_in_gb_and_follow_an_allocation():
    """VmRSS / VmHWM in GB (1024³ bytes): the peak is getrusage's maxrss (kB on Linux), and touching 256 MB
    raises the resident memory by about 0.25 GB."""
    assert peak_rss_gb() == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, rel=0.02)
    before = current_rss_gb()
    block = np.ones(256 * 2**20, dtype=np.uint8)
    grown = current_rss_gb() - before
    assert 0.2 < grown < 0.3 and peak_rss_gb() >= current_rss_gb() - 1e-3
    del block
