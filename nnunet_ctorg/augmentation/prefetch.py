"""Overlap the host-to-device copy of the next training batch with the current step (CUDA only)."""

from collections.abc import Iterator
from typing import Any

import torch


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


class DevicePrefetcher:
    """Wraps nnU-Net's training batch generator: while one batch trains, the next one is copied.

    ``next()`` returns a batch whose tensors are already on ``device`` and starts the non-blocking copy of
    the following batch on a side CUDA stream (nnU-Net's loader pins its batches, so the copy runs beside
    the compute); the current stream waits for that copy only when the batch is handed out. On any other
    device the batches pass through unchanged. Attributes (``_finish``, ...) are the wrapped generator's.
    """

    def __init__(self, loader: Iterator[dict], device: torch.device):
        self.loader, self.device = loader, torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._pending: dict | None = None

    def _fetch(self) -> dict:
        batch = next(self.loader)
        if self.stream is None:
            return batch
        with torch.cuda.stream(self.stream):
            return _to_device(batch, self.device)

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> dict:
        batch = self._pending if self._pending is not None else self._fetch()
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for tensor in _tensors(batch):
                tensor.record_stream(current)  # the side stream's memory is used on this one
        self._pending = self._fetch() if self.stream is not None else None
        return batch

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)
