"""Slab-wise resampling against nnU-Net's resample_data_or_seg_to_shape on the whole array."""

import numpy as np
import pytest
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

from nnunet_ctorg.inference.slab_resampling import SlabResampler, resampling_kind, sample_positions, spline_margin
from nnunet_ctorg.planning.antialiasing import antialiasing_sigma, smooth_for_downsampling


def _slabwise(x, resampler, n_slabs, clip):
    axis = resampler.axis
    bounds = np.linspace(0, resampler.out_shape[axis], n_slabs + 1).astype(int)
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        a, b = resampler.source_range(lo, hi)
        index = [slice(None)] * 3
        index[axis] = slice(a, b)
        parts.append(resampler.resample(x[tuple(index)], a, lo, hi, clip=clip, out_dtype=x.dtype))
    return np.concatenate(parts, axis=axis)


@pytest.mark.parametrize(("shape", "current", "new", "axis", "order"), [
    ((57, 40, 44), (1.5, 0.8, 0.8), (1.1, 1.0, 1.0), 0, 3),    # 3-D cubic, upsampled along the slab axis
    ((57, 40, 44), (0.8, 1.5, 0.8), (1.3, 1.0, 1.0), 1, 3),    # 3-D cubic, downsampled, slab axis 1
    ((60, 40, 44), (5.0, 0.8, 0.8), (1.7, 1.0, 1.0), 0, 3),    # separate z along the slab axis
    ((60, 40, 44), (5.0, 0.8, 0.8), (1.7, 1.0, 1.0), 2, 3),    # separate z across the slab axis
    ((61, 40, 44), (1.0, 1.0, 1.0), (2.9, 1.0, 1.0), 0, 1),    # linear (nnU-Net's export)
])
def test_slabs_equal_nnunets_whole_array_resampling(real_ct_dir, shape, current, new, axis, order):
    import SimpleITK as sitk

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz")))
    x = np.resize(hu.astype(np.float32), shape) / 300.0  # real anatomy, reshaped: edges of bone, air and fat
    new_shape = compute_new_shape(shape, current, new)
    reference = resample_data_or_seg_to_shape(x[None], new_shape, current, new, order=order, order_z=0,
                                              force_separate_z=None)[0]
    resampler = SlabResampler(shape, new_shape, current, new, axis,
                              {"order": order, "order_z": 0, "force_separate_z": None, "threshold": None})
    s = resampler.separate_axis
    if s is None:
        clip = (float(x.min()), float(x.max()))
    else:  # per slice across the separate axis, from the whole scan (a pre-pass in the predictor)
        other = tuple(k for k in range(3) if k != s)
        clip = (x.min(axis=other), x.max(axis=other))
    ours = _slabwise(x, resampler, 4, clip)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    assert np.array_equal(ours, reference)


def test_antialiased_slabs_equal_the_whole_array():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 30, 34)).astype(np.float32)
    current, new = (0.8, 0.8, 0.8), (3.0, 2.5, 2.5)
    new_shape = compute_new_shape(x.shape, current, new)
    sigma = antialiasing_sigma(current, new)
    smoothed = smooth_for_downsampling(x[None], current, new)
    reference = resample_data_or_seg_to_shape(smoothed, new_shape, current, new, order=3, order_z=0,
                                              force_separate_z=None)[0]
    resampler = SlabResampler(x.shape, new_shape, current, new, 0,
                              {"order": 3, "order_z": 0, "force_separate_z": None, "threshold": None}, sigma)
    ours = _slabwise(x, resampler, 3, (float(smoothed.min()), float(smoothed.max())))
    assert np.array_equal(ours, reference)


def test_positions_are_the_whole_scans_not_the_slabs():
    # a slab of 100 of 458 slices, resized on its own, would put its samples at 100/53 instead of 458/244
    whole = sample_positions(458, 244)
    assert whole[200] == pytest.approx(458 / 244 * 200.5 - 0.5)
    assert spline_margin(3) > spline_margin(1) == 1
    with pytest.raises(ValueError, match="order must be in 0..5"):
        spline_margin(7)


def test_unsupported_resampling_is_refused_by_name():
    with pytest.raises(ValueError, match="'resample_torch_fornnunet'.*nnUNetv2_predict"):
        resampling_kind({"resampling_fn_data": "resample_torch_fornnunet"}, "data")
    settings = resampling_kind({"resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1}},
                               "probabilities")
    assert settings["order"] == 1 and settings["order_z"] == 0


def test_a_slab_axis_that_keeps_its_length_is_cut_to_the_requested_slices():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 30, 30)).astype(np.float32)
    current, new = (4.0, 3.0, 3.0), (4.0, 4.0, 4.0)  # only in-plane changes
    new_shape = compute_new_shape(x.shape, current, new)
    reference = resample_data_or_seg_to_shape(x[None], new_shape, current, new, order=3, order_z=0,
                                              force_separate_z=None)[0]
    resampler = SlabResampler(x.shape, new_shape, current, new, 0,
                              {"order": 3, "order_z": 0, "force_separate_z": None, "threshold": None})
    assert np.array_equal(_slabwise(x, resampler, 3, (float(x.min()), float(x.max()))), reference)
