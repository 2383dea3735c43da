"""Chunk layout along one axis and the blending of chunk probabilities into labels.

Chunks overlap by ``overlap`` slices. In an overlap the class probabilities of the two chunks are
mixed with weights that ramp linearly across it (the earlier chunk from 1 to 0, the later from 0
to 1), then the argmax is taken: no hard cut. Only the current chunk and the overlap still waiting
for the next chunk are held as floats; finished slices go straight into the uint8 label volume.
"""

from collections.abc import Callable

import numpy as np


def chunk_layout(n_slices: int, chunk: int, overlap: int, min_length: int = 1) -> list[tuple[int, int]]:
    """Half-open slice ranges ``[start, stop)`` covering ``0..n_slices`` with chunks of at most ``chunk`` slices.

    As few chunks as possible, all of one length, consecutive ones overlapping by at least ``overlap``
    slices; a slice is in at most two chunks. A scan no longer than one chunk is one chunk. The overlap
    may be at most a third of the chunk (so that no three chunks meet). Chunks are made no shorter than
    ``min_length`` (the overlap grows instead).
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if chunk < 1 or overlap < 0:
        raise ValueError(f"chunk must be >= 1 and overlap >= 0 slices, got chunk={chunk}, overlap={overlap}")
    if 3 * overlap > chunk:
        raise ValueError(f"the overlap ({overlap} slices) must be at most a third of the chunk ({chunk} slices)")
    if n_slices <= chunk:
        return [(0, n_slices)]
    n = -(-(n_slices - overlap) // (chunk - overlap))
    length = min(max(-(-(n_slices + (n - 1) * overlap) // n), min_length), chunk)  # <= chunk
    starts = [i * (n_slices - length) // (n - 1) for i in range(n)]
    return [(s, s + length) for s in starts]


def ramp(length: int) -> np.ndarray:
    """Weights of the later chunk across an overlap of ``length`` slices, strictly inside (0, 1)."""
    return (np.arange(length, dtype=np.float32) + 0.5) / length


def _expand(probabilities: np.ndarray, box: tuple[slice, slice], to: tuple[slice, slice]) -> np.ndarray:
    """(C, n, *box) probabilities placed in the larger in-plane box ``to``; outside ``box`` is background."""
    if box == to:
        return probabilities
    out = np.zeros((probabilities.shape[0], probabilities.shape[1], to[0].stop - to[0].start,
                    to[1].stop - to[1].start), dtype=probabilities.dtype)
    out[0] = 1
    out[:, :, box[0].start - to[0].start:box[0].stop - to[0].start,
        box[1].start - to[1].start:box[1].stop - to[1].start] = probabilities
    return out


class ChunkStitcher:
    """Collects chunk probabilities in layout order and writes labels into ``labels`` as slices finish.

    Args:
        labels: the output label volume (any integer dtype), filled in place.
        layout: ranges from :func:`chunk_layout` along ``axis``.
        axis: array axis of the chunks.
    """

    def __init__(self, labels: np.ndarray, layout: list[tuple[int, int]], axis: int = 0) -> None:
        if labels.ndim != 3 or axis not in range(3):
            raise ValueError(f"labels must be 3-D and axis in 0..2, got shape {labels.shape} and axis {axis}")
        if layout[0][0] != 0 or layout[-1][1] != labels.shape[axis]:
            raise ValueError(f"layout {layout[0]}..{layout[-1]} does not cover 0..{labels.shape[axis]}")
        self.layout = layout
        self._labels = np.moveaxis(labels, axis, 0)  # a view: chunks run along its first axis
        self._next = 0
        self._pending: tuple[np.ndarray, tuple[slice, slice]] | None = None  # overlap with the next chunk

    @property
    def finished(self) -> bool:
        return self._next == len(self.layout)

    def add(self, probabilities: np.ndarray, box: tuple[slice, slice] | None = None) -> None:
        """Add the probabilities of the next chunk of the layout.

        Args:
            probabilities: (C, chunk length, *in-plane) with the chunk axis first among the spatial
                axes (as :func:`numpy.moveaxis` puts it), class 0 = background.
            box: in-plane region the probabilities cover (the body crop); the rest is background.
        """
        if self.finished:
            raise ValueError("all chunks have been added already")
        start, stop = self.layout[self._next]
        plane = self._labels.shape[1:]
        box = box or (slice(0, plane[0]), slice(0, plane[1]))
        expected = (stop - start, box[0].stop - box[0].start, box[1].stop - box[1].start)
        if probabilities.ndim != 4 or probabilities.shape[1:] != expected:
            raise ValueError(f"chunk {self._next} ({start}..{stop}): probabilities of shape {probabilities.shape}, "
                             f"expected (C, {', '.join(map(str, expected))})")
        done_from = start
        if self._pending is not None:
            previous, previous_box = self._pending
            n = previous.shape[1]
            union = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(previous_box, box))
            w = ramp(n)[None, :, None, None]
            mixed = _expand(previous, previous_box, union) * (1 - w) + _expand(probabilities[:, :n], box, union) * w
            self._write(start, start + n, np.argmax(mixed, axis=0), union)
            del mixed
            done_from, self._pending = start + n, None
        is_last = self._next == len(self.layout) - 1
        keep_from = stop if is_last else self.layout[self._next + 1][0]
        if keep_from > done_from:
            self._write(done_from, keep_from, np.argmax(probabilities[:, done_from - start:keep_from - start], axis=0),
                        box)
        if not is_last:
            self._pending = (probabilities[:, keep_from - start:].copy(), box)
        self._next += 1

    def _write(self, start: int, stop: int, labels: np.ndarray, box: tuple[slice, slice]) -> None:
        slab = self._labels[start:stop]
        slab[...] = 0
        slab[:, box[0], box[1]] = labels
