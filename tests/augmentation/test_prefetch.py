"""The prefetching wrapper of nnU-Net's training batch generator."""

import pytest
import torch

from nnunet_ctorg.augmentation.prefetch import DevicePrefetcher


class _Loader:
    def __init__(self):
        self.count, self.finished = 0, False

    def __next__(self):
        self.count += 1
        return {"data": torch.full((2, 1, 4, 4, 4), float(self.count)), "target": [torch.zeros(2, 1, 4, 4, 4)],
                "keys": [f"case{self.count}"]}

    def _finish(self):
        self.finished = True


def test_on_the_cpu_batches_pass_through_in_order_and_attributes_are_the_loaders():
    loader = _Loader()
    prefetcher = DevicePrefetcher(loader, torch.device("cpu"))
    first, second = next(prefetcher), next(prefetcher)
    assert first["keys"] == ["case1"] and second["keys"] == ["case2"] and loader.count == 2
    prefetcher._finish()
    assert loader.finished and iter(prefetcher) is prefetcher


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_next_batch_is_copied_ahead_and_arrives_intact():
    loader = _Loader()
    prefetcher = DevicePrefetcher(loader, torch.device("cuda"))
    batches = [next(prefetcher) for _ in range(3)]
    assert loader.count == 4  # one batch ahead
    for i, batch in enumerate(batches, start=1):
        assert batch["data"].is_cuda and batch["target"][0].is_cuda and batch["keys"] == [f"case{i}"]
        assert torch.equal(batch["data"].cpu(), torch.full((2, 1, 4, 4, 4), float(i)))


def test_a_copy_before_init_does_not_recurse_into_the_missing_loader():
    """``copy`` builds the object without ``__init__`` and asks for ``__setstate__``: no recursion via ``loader``."""
    import copy

    loader = _Loader()
    prefetcher = DevicePrefetcher(loader, torch.device("cpu"))
    clone = copy.copy(prefetcher)
    assert clone.loader is loader and clone.stream is None
    with pytest.raises(AttributeError):
        getattr(DevicePrefetcher.__new__(DevicePrefetcher), "anything")  # noqa: B009
