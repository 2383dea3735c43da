"""Chunk layout along one axis and the blending of chunk probabilities into labels.

Chunks overlap by ``overlap`` slices. In an overlap the class probabilities of the two chunks are
mixed with weights that ramp linearly across it (the earlier chunk from 1 to 0, the later from 0
to 1), then the argmax is taken: no hard cut. Only the current chunk and the overlap still waiting
for the next chunk are held as floats; finished slices go straight into the uint8 label volume.
"""


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
    if n_slices <= chunk:  # one chunk needs no overlap, however short the scan
        return [(0, n_slices)]
    if 3 * overlap > chunk:
        raise ValueError(f"the overlap ({overlap} slices) must be at most a third of the chunk ({chunk} slices)")
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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0, in place on a float array (returned)."""
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


class ChunkStitcher:
    """Collects chunks in layout order and writes labels into ``labels`` as slices finish.

    A chunk arrives as its class logits one channel at a time (:meth:`add_logits`), so that a chunk
    never holds more than one full-size float channel: outside the overlaps only the running maximum
    and its class are kept (the argmax); inside them the logits of all classes, turned into
    probabilities and blended.

    Where two chunks overlap by more than ``blend`` slices, only the ``blend`` slices in the middle of the
    overlap are blended; on either side the chunk whose interior the slice is in decides (both chunks still
    give the network the context of the whole overlap).

    Args:
        labels: the output label volume (uint8 or uint16), filled in place.
        layout: ranges from :func:`chunk_layout` along ``axis``.
        n_classes: number of classes (channels) of every chunk.
        axis: array axis of the chunks.
        blend: most slices blended per overlap (``None``: the whole overlap; 0: a hard cut in its middle).
    """

    def __init__(self, labels: np.ndarray, layout: list[tuple[int, int]], n_classes: int, axis: int = 0,
                 blend: int | None = None) -> None:
        if labels.ndim != 3 or axis not in range(3):
            raise ValueError(f"labels must be 3-D and axis in 0..2, got shape {labels.shape} and axis {axis}")
        if layout[0][0] != 0 or layout[-1][1] != labels.shape[axis]:
            raise ValueError(f"layout {layout[0]}..{layout[-1]} does not cover 0..{labels.shape[axis]}")
        if not 2 <= n_classes <= np.iinfo(labels.dtype).max + 1:
            raise ValueError(f"n_classes must be in 2..{np.iinfo(labels.dtype).max + 1}, got {n_classes}")
        if blend is not None and blend < 0:
            raise ValueError(f"blend must be >= 0 slices, got {blend}")
        self.layout, self.n_classes = layout, n_classes
        self._zones = []  # blended slices [a, b) between chunk i and i + 1
        for (_, stop), (start, _) in zip(layout, layout[1:]):
            width = stop - start if blend is None else min(blend, stop - start)
            a = start + (stop - start - width) // 2
            self._zones.append((a, a + width))
        self._labels = np.moveaxis(labels, axis, 0)  # a view: chunks run along its first axis
        self._next = 0
        self._pending: tuple[np.ndarray, tuple[slice, slice]] | None = None  # overlap with the next chunk

    @property
    def finished(self) -> bool:
        return self._next == len(self.layout)

    def add(self, probabilities: np.ndarray, box: tuple[slice, slice] | None = None) -> None:
        """Add the next chunk as (C, chunk length, *box) probabilities (see :meth:`add_logits`)."""
        self.add_logits((np.log(np.maximum(p, 1e-30)) for p in probabilities), box)

    def add_logits(self, channels, box: tuple[slice, slice] | None = None) -> None:
        """Add the next chunk of the layout.

        Args:
            channels: iterable of ``n_classes`` float arrays of shape (chunk length, *box), the chunk
                axis first; class 0 = background. Logits or log-probabilities.
            box: in-plane region the chunk covers (the body crop); the rest is background.
        """
        if self.finished:
            raise ValueError("all chunks have been added already")
        start, stop = self.layout[self._next]
        plane = self._labels.shape[1:]
        box = box or (slice(0, plane[0]), slice(0, plane[1]))
        expected = (stop - start, box[0].stop - box[0].start, box[1].stop - box[1].start)
        i = self._next
        is_last = i == len(self.layout) - 1
        zone_in = self._zones[i - 1] if i > 0 else (start, start)
        zone_out = self._zones[i] if not is_last else (stop, stop)
        head_sl = slice(zone_in[0] - start, zone_in[1] - start)
        mid = slice(zone_in[1] - start, zone_out[0] - start)
        tail_sl = slice(zone_out[0] - start, zone_out[1] - start)
        n_head = zone_in[1] - zone_in[0]
        head = tail = best = best_class = None
        n = 0
        for c, logits in enumerate(channels):
            if c >= self.n_classes or logits.shape != expected:
                raise ValueError(f"chunk {self._next} ({start}..{stop}): channel {c} of shape {logits.shape}, "
                                 f"expected {self.n_classes} channels of shape {expected}")
            if head is None:
                head = np.empty((self.n_classes, n_head, *expected[1:]), np.float32)
                tail = np.empty((self.n_classes, zone_out[1] - zone_out[0], *expected[1:]), np.float32)
                best = np.array(logits[mid], dtype=np.float32)
                best_class = np.zeros(best.shape, self._labels.dtype)
            else:
                part = logits[mid]
                better = part > best
                best[better] = part[better]
                best_class[better] = c
            head[c] = logits[head_sl]
            tail[c] = logits[tail_sl]
            n += 1
        if n != self.n_classes:
            raise ValueError(f"chunk {self._next}: {n} channels, expected {self.n_classes}")
        if self._pending is not None and n_head:
            previous, previous_box = self._pending
            union = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(previous_box, box))
            w = ramp(n_head)[None, :, None, None]
            mixed = _expand(previous, previous_box, union) * (1 - w) + _expand(softmax(head), box, union) * w
            self._write(zone_in[0], zone_in[1], np.argmax(mixed, axis=0), union)
            del mixed
        self._pending = None
        if mid.stop > mid.start:
            self._write(start + mid.start, start + mid.stop, best_class, box)
        if not is_last:
            self._pending = (softmax(tail), box)
        self._next += 1

    def _write(self, start: int, stop: int, labels: np.ndarray, box: tuple[slice, slice]) -> None:
        slab = self._labels[start:stop]
        slab[...] = 0
        slab[:, box[0], box[1]] = labels
