"""``--save_probabilities`` against the files nnU-Net's own predictor writes for the same case."""

import pickle
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
from nnunet_ctorg.inference.folder_prediction import predict_folder
from nnunet_ctorg.inference.probability_export import ProbabilityWriter
from tests.inference.standin import standin_plans, standin_predictor


def _nnunet_files(predictor, ct_path, out_dir) -> tuple[np.ndarray, dict, np.ndarray]:
    """What ``nnUNetv2_predict --save_probabilities`` writes: probabilities, properties, labels."""
    predictor.predict_from_files_sequential([[str(ct_path)]], [str(out_dir / "case")], save_probabilities=True,
                                            overwrite=True)
    with open(out_dir / "case.pkl", "rb") as f:
        properties = pickle.load(f)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "case.nii.gz")))
    return np.load(out_dir / "case.npz")["probabilities"], properties, labels


# sagittal: the chunk axis is nnU-Net's inner tile loop, so half-precision sums are added in another order at chunk
# seams (README); in one chunk the tiles run in nnU-Net's order
@pytest.mark.parametrize("stored, chunk_mm", [("axial slices", 40), ("sagittal slices", None)])
def test_probabilities_and_properties_are_nnunets(real_ct_dir, tmp_path, stored, chunk_mm):
    image = sitk.ReadImage(str(real_ct_dir / "example_ct.nii.gz"))[::2, ::2, 20:92]
    image.SetOrigin((-120.5, 80.25, -300.0))  # an origin of its own (the properties carry it)
    if stored == "sagittal slices":  # the cranio-caudal axis is array axis 2: chunks and the writer run across
        image = sitk.PermuteAxes(image, [2, 1, 0])
    (tmp_path / "in").mkdir()
    ct_path = tmp_path / "in" / "case_0000.nii.gz"
    sitk.WriteImage(image, str(ct_path))
    predictor = standin_predictor(standin_plans(spacing=(2.5, 5.0, 5.0), patch=(32, 16, 16)), folds=2)
    (tmp_path / "nnunet").mkdir()
    reference, reference_properties, reference_labels = _nnunet_files(predictor, ct_path, tmp_path / "nnunet")

    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=chunk_mm))
    chunked.export_block_bytes = 1  # one original slice per export block
    summary = predict_folder(chunked, tmp_path / "in", tmp_path / "ours", progress=False, save_probabilities=True)
    assert summary["predicted"] == ["case"] and len(chunked.last_chunks) >= (3 if chunk_mm else 1)
    probabilities = np.load(tmp_path / "ours" / "case.npz")["probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == reference.shape
    # float32 softmax differs by an ulp with the array's shape (vectorised vs scalar exp); the resampled logits are
    # float16, and where float64 rounding tips one by a step, the probability moves ~1e-4
    difference = np.abs(probabilities - reference)
    assert np.mean(difference <= 1e-7) > 0.9998 and difference.max() < 1e-3
    with open(tmp_path / "ours" / "case.pkl", "rb") as f:
        properties = pickle.load(f)
    assert properties == reference_properties
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ours" / "case.nii.gz")))
    assert np.array_equal(labels, reference_labels)
    assert not [p.name for p in (tmp_path / "ours").iterdir() if p.name.startswith(".tmp")]
    # a finished case is skipped; its files stay
    again = predict_folder(chunked, tmp_path / "in", tmp_path / "ours", continue_prediction=True, progress=False,
                           save_probabilities=True)
    assert again["skipped"] == ["case"]


def test_outside_the_crop_and_the_body_box_is_background(real_ct_dir, tmp_path):
    image = sitk.ReadImage(str(real_ct_dir / "example_ct.nii.gz"))[::2, ::2, 30:90]
    array = sitk.GetArrayFromImage(image)
    array[:6] = 0  # slices nnU-Net's crop to non-zero voxels leaves out
    array[:, :, :5] = 0
    framed = sitk.GetImageFromArray(array)
    framed.CopyInformation(image)
    predictor = standin_predictor(standin_plans(spacing=(3.0, 6.0, 6.0), patch=(24, 16, 16)))
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=50))
    writer = ProbabilityWriter(tmp_path / "case", 4, array.shape)
    labels = chunked.predict_image(framed, probabilities=writer)
    writer.close({"case": 1})
    probabilities = np.load(tmp_path / "case.npz")["probabilities"]
    assert chunked.last_properties["bbox_used_for_cropping"][0] == [6, array.shape[0]]
    outside = np.zeros(array.shape, bool)
    outside[:6] = outside[:, :, :5] = True
    assert np.all(probabilities[0][outside] == 1) and np.all(probabilities[1:][:, outside] == 0)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(probabilities.argmax(0), labels) and len(np.unique(labels)) == 4

    box = (slice(10, 40), slice(5, 40), slice(8, 50))
    writer = ProbabilityWriter(tmp_path / "boxed", 4, array.shape)
    chunked.predict_array(sitk.GetArrayViewFromImage(framed), framed.GetSpacing()[::-1], 0,
                          np.zeros(array.shape, np.uint8), body_box=box, probabilities=writer)
    writer.close({})
    boxed = np.load(tmp_path / "boxed.npz")["probabilities"]
    assert np.array_equal(boxed[(slice(None), *box)], probabilities[(slice(None), *box)])
    in_box = np.zeros(array.shape, bool)
    in_box[box] = True
    assert np.all(boxed[0][~in_box] == 1) and np.all(boxed[1:][:, ~in_box] == 0)


def test_writer_refuses_bad_input_and_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError, match="n_classes must be >= 2, got 1"):
        ProbabilityWriter(tmp_path / "a", 1, (4, 4, 4))
    writer = ProbabilityWriter(tmp_path / "a", 3, (4, 5, 6))
    with pytest.raises(ValueError, match="expected 3 classes"):
        writer[0:2, 0:5, 0:6] = np.zeros((2, 2, 5, 6))
    with pytest.raises(TypeError, match="takes \\(z, y, x\\) slices"):
        writer[0] = np.zeros((3, 5, 6))
    writer[1:3, 1:4, 0:6] = np.full((3, 2, 3, 6), 1 / 3)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        writer.close({"unpicklable": lambda: 0})
    assert list(tmp_path.iterdir()) == []
    writer = ProbabilityWriter(tmp_path / "b", 3, (4, 5, 6))
    writer[1:3, 1:4, 0:6] = np.full((3, 2, 3, 6), 0.25)
    writer.close({"k": 1})
    probabilities = np.load(tmp_path / "b.npz")["probabilities"]
    expected = np.zeros((3, 4, 5, 6), np.float32)
    expected[0] = 1
    expected[:, 1:3, 1:4] = 0.25
    assert np.array_equal(probabilities, expected)
    with open(tmp_path / "b.pkl", "rb") as f:
        assert pickle.load(f) == {"k": 1}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slabs_in_any_order_along_any_axis_land_in_c_order(tmp_path, monkeypatch, axis):
    import nnunet_ctorg.inference.probability_export as export

    monkeypatch.setattr(export, "READ_BYTES", 64)  # read back in blocks of one z slice
    rng = np.random.default_rng(axis)
    shape, n = (5, 4, 3), 3
    expected = np.zeros((n, *shape), np.float32)
    expected[0] = 1
    writer = ProbabilityWriter(tmp_path / "case", n, shape)
    writer.axis, writer.keep_box = axis, (slice(1, None), slice(0, -1), slice(None))
    kept = np.zeros(shape, bool)
    kept[writer.keep_box] = True
    cuts = [(a, a + 1) for a in range(shape[axis])]
    for a0, a1 in [cuts[i] for i in rng.permutation(len(cuts))[:-1]]:  # one slab never written
        index = [slice(0, 2), slice(1, 4), slice(0, 3)]
        index[axis] = slice(a0, a1)
        values = rng.random((n, *[len(range(*i.indices(s))) for i, s in zip(index, shape)])).astype(np.float32)
        writer[tuple(index)] = values
        region = expected[(slice(None), *index)]
        region[...] = np.where(kept[tuple(index)][None], values, region)
    writer.close({})
    assert np.array_equal(np.load(tmp_path / "case.npz")["probabilities"], expected)


def _background(n: int, shape) -> np.ndarray:
    expected = np.zeros((n, *shape), np.float32)
    expected[0] = 1
    return expected


@pytest.mark.parametrize("axis", [1, 2])
def test_thick_slabs_across_z_and_read_back_in_several_blocks(tmp_path, monkeypatch, axis):
    import nnunet_ctorg.inference.probability_export as export

    monkeypatch.setattr(export, "READ_BYTES", 4 * 4 * 3 * 2)  # two z slices per block of five
    shape, n = (5, 4, 3), 3
    writer = ProbabilityWriter(tmp_path / "case", n, shape)
    writer.axis = axis
    expected = _background(n, shape)
    index = [slice(None)] * 3
    index[axis] = slice(0, 2)
    values = np.random.default_rng(0).random((n, *expected[(0, *index)].shape)).astype(np.float32)
    writer[tuple(index)] = values
    expected[(slice(None), *index)] = values
    writer.close({})
    assert np.array_equal(np.load(tmp_path / "case.npz")["probabilities"], expected)


@pytest.mark.parametrize("axis, box, index", [
    (0, (slice(0, 1), slice(None), slice(None)), (slice(2, 5), slice(None), slice(None))),  # slab past the box
    (1, (slice(None), slice(0, -1), slice(None)), (slice(None), slice(3, 4), slice(None))),  # negative stop
])
def test_slabs_outside_the_keep_box_are_background(tmp_path, axis, box, index):
    shape, n = (6, 4, 3), 2
    writer = ProbabilityWriter(tmp_path / "case", n, shape)
    writer.axis, writer.keep_box = axis, box
    writer[index] = np.full((n, *np.zeros(shape)[index].shape), 0.5)
    writer.close({})
    assert np.array_equal(np.load(tmp_path / "case.npz")["probabilities"], _background(n, shape))


def test_an_unwritten_case_is_background_and_a_failed_close_keeps_older_files(tmp_path):
    writer = ProbabilityWriter(tmp_path / "empty", 2, (3, 2, 2))
    writer.close({})
    assert np.array_equal(np.load(tmp_path / "empty.npz")["probabilities"], _background(2, (3, 2, 2)))
    with zipfile.ZipFile(tmp_path / "empty.npz") as archive:  # deflated, as numpy.savez_compressed
        assert archive.getinfo("probabilities.npy").compress_type == zipfile.ZIP_DEFLATED
    ProbabilityWriter(tmp_path / "two", 2, (2, 2, 2)).abort()  # two classes are enough
    writer = ProbabilityWriter(tmp_path / "case", 2, (3, 2, 2))
    with pytest.raises(TypeError):
        writer[0:1, 0:2] = np.zeros((2, 1, 2, 2))
    (tmp_path / "case.pkl").write_bytes(b"old")
    (tmp_path / "case.npz").write_bytes(b"old")
    with pytest.raises((pickle.PicklingError, AttributeError)):
        writer.close({"unpicklable": lambda: 0})
    assert writer._raw.closed
    assert (tmp_path / "case.pkl").read_bytes() == b"old" and (tmp_path / "case.npz").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.npz", "case.pkl", "empty.npz", "empty.pkl"]
