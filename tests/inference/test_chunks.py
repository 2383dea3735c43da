"""Chunk layout and the blending of chunk probabilities."""

import numpy as np
import pytest

from nnunet_ctorg.inference.chunks import ChunkStitcher, chunk_layout, ramp


@pytest.mark.parametrize("n, chunk, overlap", [(1, 10, 3), (9, 10, 3), (10, 10, 3), (11, 10, 3), (37, 10, 3),
                                               (191, 100, 10), (600, 200, 33), (1001, 90, 30), (57, 12, 0),
                                               (30, 30, 17), (5, 8, 20)])  # one chunk: any overlap
def test_layout_covers_every_slice_with_at_most_two_chunks(n, chunk, overlap):
    layout = chunk_layout(n, chunk, overlap)
    assert layout[0][0] == 0 and layout[-1][1] == n
    lengths = {stop - start for start, stop in layout}
    assert len(lengths) == 1 and max(lengths) <= chunk
    cover = np.zeros(n, int)
    for start, stop in layout:
        cover[start:stop] += 1
    assert cover.min() >= 1 and cover.max() <= 2
    for (_, stop), (start, _) in zip(layout, layout[1:]):
        assert stop - start >= overlap
    if n <= chunk:
        assert layout == [(0, n)]


def test_layout_min_length_grows_the_overlap():
    layout = chunk_layout(465, 300, 34, min_length=290)
    assert all(stop - start == 290 for start, stop in layout)


@pytest.mark.parametrize("chunk, overlap", [(10, 11), (10, 10), (10, 4), (0, 0), (10, -1)])
def test_bad_layouts_are_rejected(chunk, overlap):
    with pytest.raises(ValueError, match=str(overlap) if overlap > 0 else "must be"):
        chunk_layout(100, chunk, overlap)


def _stitch(volume_probs, layout, axis, boxes=None):
    labels = np.full(volume_probs.shape[1:], 255, np.uint8)
    stitcher = ChunkStitcher(labels, layout, volume_probs.shape[0], axis)
    moved = np.moveaxis(volume_probs, axis + 1, 1)
    for i, (start, stop) in enumerate(layout):
        box = boxes[i] if boxes else None
        block = moved[:, start:stop]
        if box:
            block = block[:, :, box[0], box[1]]
        stitcher.add(np.ascontiguousarray(block), box)
    assert stitcher.finished
    return labels


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_identical_chunk_probabilities_give_the_whole_argmax_on_any_axis(axis):
    rng = np.random.default_rng(1)
    probs = rng.random((4, 23, 19, 17)).astype(np.float32)
    layout = chunk_layout(probs.shape[axis + 1], 9, 3)
    labels = _stitch(probs, layout, axis)
    assert not (labels == 255).any()  # every slice written
    assert np.array_equal(labels, probs.argmax(0))


def test_overlap_ramps_from_previous_to_next_chunk():
    n, c = 20, 3
    layout = [(0, 12), (8, 20)]
    labels = np.zeros((n, 2, 2), np.uint8)
    stitcher = ChunkStitcher(labels, layout, c)
    first = np.zeros((c, 12, 2, 2), np.float32)
    first[1] = 1  # the first chunk says class 1 everywhere
    second = np.zeros((c, 12, 2, 2), np.float32)
    second[2] = 1  # the second says class 2
    stitcher.add(first)
    stitcher.add(second)
    # overlap slices 8..11: weights of the second chunk 1/8, 3/8, 5/8, 7/8
    assert np.allclose(ramp(4), [0.125, 0.375, 0.625, 0.875])
    assert labels[:, 0, 0].tolist() == [1] * 10 + [2] * 10


def test_a_long_overlap_is_blended_only_in_its_middle():
    labels = np.zeros((16, 1, 1), np.uint8)
    stitcher = ChunkStitcher(labels, [(0, 12), (4, 16)], 3, blend=2)
    for cls in (1, 2):
        probs = np.full((3, 12, 1, 1), 0.1, np.float32)
        probs[cls] = 0.8
        stitcher.add(probs)
    # overlap 4..11, blended zone 7..8 (weights of the second chunk 0.25, 0.75)
    assert labels[:, 0, 0].tolist() == [1] * 8 + [2] * 8
    hard = np.zeros((16, 1, 1), np.uint8)
    cut = ChunkStitcher(hard, [(0, 12), (4, 16)], 3, blend=0)
    for cls in (1, 2):
        probs = np.full((3, 12, 1, 1), 0.1, np.float32)
        probs[cls] = 0.8
        cut.add(probs)
    assert hard[:, 0, 0].tolist() == [1] * 8 + [2] * 8


def test_in_plane_boxes_are_background_outside():
    probs = np.zeros((3, 12, 6, 6), np.float32)
    probs[2] = 1
    layout = [(0, 8), (4, 12)]
    boxes = [(slice(1, 4), slice(0, 6)), (slice(2, 6), slice(1, 3))]
    labels = _stitch(probs, layout, 0, boxes)
    assert labels[0:4, 1:4, :].min() == 2 and labels[0:4, 0].max() == 0 and labels[0:4, 4:].max() == 0
    assert labels[8:, 2:6, 1:3].min() == 2 and labels[8:, :, 3:].max() == 0
    # in the overlap the union box is used: inside either box the class with the larger blended share wins
    assert labels[4:8, 2:4, 1:3].min() == 2


def test_stitcher_checks_shapes_and_order():
    labels = np.zeros((10, 4, 4), np.uint8)
    stitcher = ChunkStitcher(labels, [(0, 6), (4, 10)], 2)
    with pytest.raises(ValueError, match="expected"):
        stitcher.add(np.zeros((2, 5, 4, 4), np.float32))
    with pytest.raises(ValueError, match="expected 2"):
        stitcher.add(np.zeros((3, 6, 4, 4), np.float32))
    stitcher.add(np.zeros((2, 6, 4, 4), np.float32))
    stitcher.add(np.zeros((2, 6, 4, 4), np.float32))
    with pytest.raises(ValueError, match="already"):
        stitcher.add(np.zeros((2, 6, 4, 4), np.float32))
    with pytest.raises(ValueError, match="cover"):
        ChunkStitcher(labels, [(0, 6)], 2)
    with pytest.raises(ValueError, match="n_classes"):
        ChunkStitcher(labels, [(0, 10)], 300)
