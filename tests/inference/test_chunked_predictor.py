"""The chunked predictor against nnU-Net's own prediction (a deterministic stand-in network), then a real model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.inference.case_plan import NetworkGrid, body_box_network_ranges
from nnunet_ctorg.inference.chunk_preprocessing import NetworkSlices
from nnunet_ctorg.inference.chunk_steps import SliceExport
from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
from nnunet_ctorg.inference.folder_prediction import predict_folder
from tests.inference.standin import LABELS, nnunet_labels, standin_plans, standin_predictor


@pytest.fixture(scope="module")
def real_ct_6mm(real_ct_dir):
    """The real CT at 6 x 6 mm in-plane, 3 mm slices: 61 x 51 x 112 voxels, 336 mm cranio-caudally."""
    return sitk.ReadImage(str(real_ct_dir / "example_ct.nii.gz"))[::2, ::2, :]


# (plans, folds, mirroring, least fraction of voxels with nnU-Net's label): nnU-Net resamples in all but the first
EXACT_CASES = {
    "model spacing, 3 folds": (standin_plans(spacing=(3.0, 6.0, 6.0), patch=(24, 16, 16)), 3, False, 1.0),
    "3-D cubic resampling, mirroring, 2 folds": (standin_plans(spacing=(2.5, 5.0, 5.0), patch=(32, 16, 16)), 2,
                                                 True, 1.0),
    "separate z": (standin_plans(spacing=(16.0, 5.0, 5.0), patch=(8, 16, 16)), 1, False, 1.0),
    "anti-aliased 6 x 9 x 9 mm": (standin_plans(spacing=(6.0, 9.0, 9.0), patch=(16, 8, 8), antialiasing=1 / 3), 1,
                                  False, 1.0),
    "2-D": (standin_plans(spacing=(6.0, 6.0), patch=(16, 16)), 1, False, 1.0),
    "2-D, slices across": (standin_plans(spacing=(6.0, 6.0), patch=(16, 16), transpose=(1, 0, 2)), 1, False, 1.0),
    # the chunk axis is not the slicers' outer loop: half-precision sums are added in another order at seams
    "transposed plans": (standin_plans(spacing=(5.0, 2.5, 5.0), patch=(16, 32, 16), transpose=(2, 0, 1)), 1, False,
                         0.9999),
}


@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_chunked_labels_are_nnunets(real_ct_6mm, case):
    plans, folds, mirroring, least = EXACT_CASES[case]
    predictor = standin_predictor(plans, folds, mirroring)
    reference = nnunet_labels(predictor, real_ct_6mm)
    assert len(np.unique(reference)) == len(LABELS)  # the stand-in network draws every class
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60))
    labels = chunked.predict_image(real_ct_6mm)
    assert len(chunked.last_chunks) >= 4
    assert labels.shape == reference.shape and labels.dtype == np.uint8
    assert np.mean(labels == reference) >= least


@pytest.mark.parametrize("case", ["3-D cubic resampling, mirroring, 2 folds", "separate z",
                                  "anti-aliased 6 x 9 x 9 mm", "transposed plans"])
def test_preprocessing_and_export_in_small_blocks_give_nnunets_labels(real_ct_6mm, case, monkeypatch):
    plans, folds, mirroring, least = EXACT_CASES[case]
    predictor = standin_predictor(plans, folds, mirroring)
    reference = nnunet_labels(predictor, real_ct_6mm)
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None))  # one chunk: only the blocks divide it
    nz, ny, nx = reference.shape
    chunked.prep_block_voxels = 64 * ny * nx  # a few network slices beyond the spline margins
    chunked.export_block_bytes = 1  # one original slice per export block
    calls = {"prep": 0, "export": 0}
    read, export = NetworkSlices._normalized_block, SliceExport._export_block

    def counted_read(self, *args):
        calls["prep"] += 1
        return read(self, *args)

    def counted_export(self, *args):
        calls["export"] += 1
        return export(self, *args)

    monkeypatch.setattr(NetworkSlices, "_normalized_block", counted_read)
    monkeypatch.setattr(SliceExport, "_export_block", counted_export)
    labels = chunked.predict_image(real_ct_6mm)
    assert len(chunked.last_chunks) == 1 and calls["prep"] >= 3 and calls["export"] >= 50
    assert np.mean(labels == reference) >= least


def test_labels_do_not_depend_on_the_chunk_length(real_ct_6mm):
    predictor = standin_predictor(standin_plans(spacing=(4.0, 5.0, 5.0), patch=(16, 16, 16)))
    whole = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None))
    reference = whole.predict_image(real_ct_6mm)
    assert len(whole.last_chunks) == 1
    for chunk_mm in (30, 90, 200):
        assert np.array_equal(ChunkedPredictor(predictor, ChunkSettings(chunk_mm=chunk_mm)).predict_image(real_ct_6mm),
                              reference)


@pytest.mark.parametrize("case", ["3-D cubic resampling, mirroring, 2 folds", "separate z", "transposed plans",
                                  "2-D, slices across"])
def test_preprocessed_cases_get_the_labels_of_nnunets_validation(real_ct_6mm, case):
    """A trainer's validation input (nnU-Net's preprocessed case, the network's own weights) in chunks, against
    nnU-Net's ``predict_sliding_window_return_logits`` and export: identical, chunk seams included."""
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    plans, _, mirroring, _ = EXACT_CASES[case]
    plans = json.loads(json.dumps(plans))
    plans["configurations"]["3d"]["normalization_schemes"] = ["ZScoreNormalization"]  # read as preprocessed
    predictor = standin_predictor(plans, 1, mirroring)
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    predictor.list_of_parameters = None  # as in nnU-Net's validation
    pm, cm, lm = predictor.plans_manager, predictor.configuration_manager, predictor.label_manager
    hu = sitk.GetArrayFromImage(real_ct_6mm).astype(np.float32)[None]
    data, _, props = cm.preprocessor_class(verbose=False).run_case_npy(
        hu, None, {"spacing": list(real_ct_6mm.GetSpacing()[::-1])}, pm, cm, predictor.dataset_json)
    logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(data)).cpu()
    reference = convert_predicted_logits_to_segmentation_with_correct_shape(logits, pm, cm, lm, props)
    assert len(np.unique(reference)) == len(LABELS)
    with pytest.raises(ValueError, match="normalises with ZScoreNormalization"):
        ChunkedPredictor(predictor, ChunkSettings(chunk_mm=40))  # raw CT input: the normalisation matters
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=40), preprocessed_input=True)
    out = np.zeros(reference.shape, np.uint8)
    chunked.predict_preprocessed(data, props, out)
    assert len(chunked.last_chunks) >= 3
    np.testing.assert_array_equal(out, reference)
    with pytest.raises(ValueError, match="made for preprocessed input"):
        chunked.predict_image(real_ct_6mm)
    with pytest.raises(ValueError, match=r"expected preprocessed data of shape \(1, x, y, z\)"):
        chunked.predict_preprocessed(np.concatenate([data, data]), props, out)


def test_gpu_budget_shortens_chunks_or_keeps_the_sums_on_the_cpu(real_ct_6mm, monkeypatch):
    """The GPU budget's decisions, taken on the CPU as if the model ran on CUDA: the labels never change."""
    predictor = standin_predictor(standin_plans(spacing=(4.0, 5.0, 5.0), patch=(16, 16, 16)))
    predictor.perform_everything_on_device = True
    reference = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None)).predict_image(real_ct_6mm)
    estimate, budget_of = ChunkedPredictor.estimate_gpu_bytes, ChunkedPredictor.gpu_budget_bytes
    monkeypatch.setattr(ChunkedPredictor, "estimate_gpu_bytes", lambda self, rows, *args, **kw: 1000.0 * rows)
    for budget, rows, on_device in ((2500.0, 2, True), (500.0, None, False)):
        monkeypatch.setattr(ChunkedPredictor, "gpu_budget_bytes", lambda self, b=budget: b)
        chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None))
        assert np.array_equal(chunked.predict_image(real_ct_6mm), reference)
        assert chunked.sums_on_device is on_device
        sizes = [stop - first for first, stop in chunked.last_chunks]
        assert (max(sizes) == rows and len(sizes) >= 4) if rows else len(sizes) == 1
    monkeypatch.setattr(ChunkedPredictor, "estimate_gpu_bytes", estimate)
    monkeypatch.setattr(ChunkedPredictor, "gpu_budget_bytes", budget_of)
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None))
    padded, k = [64, 80, 80], 0
    one, two = chunked.estimate_gpu_bytes(1, 8, 16, padded, k), chunked.estimate_gpu_bytes(2, 8, 16, padded, k)
    classes = predictor.label_manager.num_segmentation_heads
    # one more row: 8 more network slices of every class's half-precision sums, the weights, the float32 input and
    # the divided half-precision logits
    assert two - one == pytest.approx(1.1 * 8 * 80 * 80 * ((classes + 1) * 2 + 4 + classes * 2))
    assert chunked.estimate_gpu_bytes(2, 8, 16, padded, k, sums=False) < one
    assert chunked.gpu_budget_bytes() is None  # on the CPU


def test_gpu_budget_setting_is_checked():
    with pytest.raises(ValueError, match="max_gpu_gb must be > 0, got -1"):
        ChunkSettings(max_gpu_gb=-1)


def test_nnunets_crop_to_nonzero_voxels_is_the_whole_scans(real_ct_6mm):
    # a CT padded with exact zeros (as some converters do): nnU-Net crops them for the whole scan at once
    hu = sitk.GetArrayFromImage(real_ct_6mm)
    padded = np.zeros_like(hu)
    padded[10:100, 5:45, 3:58] = hu[10:100, 5:45, 3:58]
    image = sitk.GetImageFromArray(padded)
    image.CopyInformation(real_ct_6mm)
    predictor = standin_predictor(standin_plans(spacing=(4.0, 5.0, 5.0), patch=(16, 16, 16)))
    labels = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=40)).predict_image(image)
    assert np.array_equal(labels, nnunet_labels(predictor, image))
    assert not labels[:10].any() and not labels[:, :, :3].any()


def _framed_dense_ct(real_ct):
    """The real CT with everything below 100 HU raised to 100, inside a frame of exact zeros.

    0 is outside the body's value range, so a clip range taken over the whole array (zeros included)
    instead of nnU-Net's crop to non-zero voxels is wrong.
    """
    hu = sitk.GetArrayFromImage(real_ct)
    framed = np.zeros_like(hu)
    framed[6:100, 4:46, 3:57] = np.maximum(hu[6:100, 4:46, 3:57], 100)
    image = sitk.GetImageFromArray(framed)
    image.CopyInformation(real_ct)
    return image


CLIP_CASES = {
    "3-D cubic": standin_plans(spacing=(2.5, 5.0, 5.0), patch=(32, 16, 16)),
    # the low-resolution axis across the chunk axis: per-slice ranges of slices that span every chunk
    "separate x": standin_plans(spacing=(3.0, 5.0, 16.0), patch=(24, 16, 8)),
    "anti-aliased": standin_plans(spacing=(6.0, 9.0, 9.0), patch=(16, 8, 8), antialiasing=1 / 3),
    "anti-aliased, separate x": standin_plans(spacing=(6.0, 9.0, 24.0), patch=(16, 8, 8), antialiasing=1 / 3),
}


@pytest.mark.parametrize("case", list(CLIP_CASES))
def test_clip_range_is_that_of_nnunets_resampling_input(real_ct_6mm, case):
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    from nnunet_ctorg.planning.antialiasing import smooth_for_downsampling

    image = _framed_dense_ct(real_ct_6mm)
    predictor = standin_predictor(CLIP_CASES[case])
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=40))
    labels = chunked.predict_image(image)
    assert np.array_equal(labels, nnunet_labels(predictor, image))
    # what scikit-image's resize sees in nnU-Net: the cropped, normalised (and smoothed) image
    cropped = crop_to_nonzero(sitk.GetArrayFromImage(image).astype(np.float32)[None])[0]
    normalised = chunked.preprocessing.normalize(cropped)
    spacing, target = real_ct_6mm.GetSpacing()[::-1], predictor.configuration_manager.spacing
    if "anti-aliased" in case:
        normalised = smooth_for_downsampling(normalised, spacing, target, 1 / 3)
    low, high = chunked.last_clip_range
    if "separate x" in case:
        np.testing.assert_allclose(low, normalised[0].min(axis=(0, 1)), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(high, normalised[0].max(axis=(0, 1)), rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose([low, high], [normalised.min(), normalised.max()], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("box", [(slice(None), slice(20, 32), slice(22, 34)),
                                 (slice(50, 62), slice(None), slice(None))],
                         ids=["in-plane smaller than the patch", "fewer slices than the patch"])
def test_scans_smaller_than_the_patch_are_padded_as_nnunet_pads(real_ct_6mm, box):
    hu = sitk.GetArrayFromImage(real_ct_6mm)[box]
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(real_ct_6mm.GetSpacing())
    predictor = standin_predictor(standin_plans(spacing=(3.0, 6.0, 6.0), patch=(24, 16, 16)))
    reference = nnunet_labels(predictor, image)
    assert len(np.unique(reference)) > 1
    assert np.array_equal(ChunkedPredictor(predictor, ChunkSettings(chunk_mm=30)).predict_image(image), reference)


def test_refusals_name_the_reason():
    plans = standin_plans(normalization="ZScoreNormalization")
    with pytest.raises(ValueError, match="ZScoreNormalization, which depends on the whole image"):
        ChunkedPredictor(standin_predictor(plans))
    plans = standin_plans()
    plans["configurations"]["3d"]["previous_stage"] = "3d_lowres"
    with pytest.raises(ValueError, match="cascade stage"):
        ChunkedPredictor(standin_predictor(plans))
    plans = standin_plans()
    plans["configurations"]["3d"]["resampling_fn_data"] = "resample_torch_fornnunet"
    with pytest.raises(ValueError, match="resample_torch_fornnunet"):
        ChunkedPredictor(standin_predictor(plans))
    plans = standin_plans()
    plans["configurations"]["3d"]["resampling_fn_probabilities_kwargs"]["order"] = 3
    with pytest.raises(ValueError, match="spline order 3"):
        ChunkedPredictor(standin_predictor(plans))
    with pytest.raises(ValueError, match="max_ram_gb must be > 0"):
        ChunkSettings(max_ram_gb=0)
    with pytest.raises(ValueError, match="chunk_mm must be > 0"):
        ChunkSettings(chunk_mm=-5)


def test_cpu_bf16_runs_the_network_in_bfloat16_only_when_asked(real_ct_6mm, monkeypatch):
    import torch

    from nnunet_ctorg.inference.chunk_steps import cpu_bf16_supported

    if not cpu_bf16_supported():
        pytest.skip("this CPU has no bfloat16 instructions")
    plans, folds, mirroring, _ = EXACT_CASES["3-D cubic resampling, mirroring, 2 folds"]
    predictor = standin_predictor(plans, folds, mirroring)
    dtypes: list = []
    hook = predictor.network.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    reference = nnunet_labels(predictor, real_ct_6mm)
    exact = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60)).predict_image(real_ct_6mm)
    assert set(dtypes) == {torch.float32} and np.array_equal(exact, reference)
    dtypes.clear()
    summed: list = []  # what nnU-Net's mirroring returns: the sum of the mirrors, in float32
    mirrored = predictor._internal_maybe_mirror_and_predict
    monkeypatch.setattr(predictor, "_internal_maybe_mirror_and_predict",
                        lambda x: summed.append(mirrored(x).dtype) or mirrored(x))
    fast = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60), cpu_bf16=True).predict_image(real_ct_6mm)
    hook.remove()
    # the warm-up and every tile of both folds and their 8 mirrors in bfloat16, summed in float32
    assert set(dtypes) == {torch.bfloat16} and len(dtypes) > 8 * len(summed) > 0
    assert set(summed) == {torch.float32}
    assert fast.shape == reference.shape and fast.dtype == np.uint8
    agree = np.mean(fast == reference)
    assert 0.9 < agree < 1.0  # close to nnU-Net's labels, not the same (the stand-in's logits are near ties)


def test_cpu_bf16_is_refused_off_the_cpu_and_without_bf16_instructions(monkeypatch, tmp_path):
    import types

    import torch

    from nnunet_ctorg.inference.cli import predict_chunked_main

    with pytest.raises(ValueError, match="cpu_bf16 is for -device cpu, got device 'cuda'"):
        ChunkedPredictor(types.SimpleNamespace(device=torch.device("cuda")), cpu_bf16=True)
    # oneDNN's own check says yes on any AVX-512 CPU; bf16 instructions are what counts
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(ValueError, match="this CPU has no bfloat16 instructions"):
        ChunkedPredictor(standin_predictor(), cpu_bf16=True)
    ChunkedPredictor(standin_predictor())  # float32 needs no bf16 instructions
    # the command refuses before it loads a model (this folder has none)
    with pytest.raises(SystemExit, match="error: cpu_bf16: this CPU has no bfloat16 instructions"):
        predict_chunked_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "no_model"),
                              "-device", "cpu", "--cpu_bf16"])


def test_ram_budget_chooses_the_rows_or_fails_with_what_is_needed(real_ct_6mm):
    predictor = standin_predictor(standin_plans(spacing=(3.0, 6.0, 6.0), patch=(24, 16, 16)))
    roomy = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None, max_ram_gb=64))
    labels = roomy.predict_image(real_ct_6mm)
    assert len(roomy.last_chunks) == 1
    # a budget just below what the whole scan at once needs: more chunks, the same labels
    tight = ChunkedPredictor(predictor)
    budget = tight.base_gb + (roomy.last_estimate_gb - roomy.base_gb) - 0.001  # the base is measured anew
    tight.chunks = ChunkSettings(chunk_mm=None, max_ram_gb=budget)
    assert np.array_equal(tight.predict_image(real_ct_6mm), labels)
    assert len(tight.last_chunks) > 1 and tight.last_estimate_gb <= budget
    # the budget is compared in bytes, GB = 1024³: just below the one-chunk estimate is more than one chunk
    whole = roomy.last_estimate_gb
    roomy.chunks = ChunkSettings(chunk_mm=None, max_ram_gb=whole * (1 - 1e-4))
    roomy.predict_image(real_ct_6mm)
    assert len(roomy.last_chunks) > 1
    roomy.chunks = ChunkSettings(chunk_mm=None, max_ram_gb=whole * (1 + 1e-9))
    roomy.predict_image(real_ct_6mm)
    assert len(roomy.last_chunks) == 1 and roomy.last_estimate_gb == pytest.approx(whole, rel=1e-12)
    with pytest.raises(ValueError, match=r"--max_ram_gb .* is too small: about .* GB are needed"):
        ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None, max_ram_gb=roomy.base_gb)).predict_image(real_ct_6mm)


def test_ram_budget_counts_what_the_body_crop_holds(head_knee_6mm):
    from nnunet_ctorg.inference.body_crop import BodyCropSettings, body_region
    from nnunet_ctorg.inference.chunk_budgets import ESTIMATE_MARGIN

    predictor = standin_predictor(standin_plans(spacing=(6.0, 6.0, 6.0), patch=(32, 32, 32)))
    hu = sitk.GetArrayViewFromImage(head_knee_6mm)
    body = body_region(hu, head_knee_6mm.GetSpacing()[::-1], 0, 1, BodyCropSettings())
    # the coarse mask and its summed-area table (int32: 4 bytes a voxel, plus a zero plane in front per axis)
    assert body.nbytes == body.mask.size + 4 * int(np.prod([n + 1 for n in body.mask.shape]))
    estimates = []
    for crop in (None, BodyCropSettings()):
        chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60, max_ram_gb=64), crop)
        chunked.base_gb = 1.0  # as measured before the case: the same for both
        chunked.predict_image(head_knee_6mm)
        estimates.append(chunked.last_estimate_gb)
    assert estimates[1] - estimates[0] == pytest.approx(ESTIMATE_MARGIN * body.nbytes / 1024**3, rel=1e-9)


def test_ram_budget_counts_the_probabilities(real_ct_6mm, tmp_path):
    from nnunet_ctorg.inference.probability_export import ProbabilityWriter

    predictor = standin_predictor(standin_plans(spacing=(3.0, 6.0, 6.0), patch=(24, 16, 16)))
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None, max_ram_gb=64))
    chunked.export_block_bytes = 2**40  # one export block: its size follows the bytes per voxel
    chunked.predict_image(real_ct_6mm)
    labels_only = chunked.last_estimate_gb
    writer = ProbabilityWriter(tmp_path / "case", 4, real_ct_6mm.GetSize()[::-1])
    chunked.predict_image(real_ct_6mm, probabilities=writer)
    writer.abort()
    # 4 classes x 22 bytes per voxel more in the export block (the whole 61 x 51 x 112 scan here)
    assert chunked.last_estimate_gb - labels_only > 0.9 * 1.1 * 4 * 22 * 61 * 51 * 112 / 1024**3


@pytest.mark.parametrize("plans, box_tiles", [(standin_plans(spacing=(4.0, 3.0, 3.0), patch=(16, 32, 32)), 1512 / 1701),
                                              (standin_plans(spacing=(5.0, 4.0, 4.0), patch=(16, 24, 24)), 1224 / 1377),
                                              (standin_plans(spacing=(6.0, 6.0), patch=(32, 32)), 1.0)],
                         ids=["model spacing", "cubic resampling", "2-D"])
def test_body_crop_gives_the_whole_scans_labels_inside_the_body(phantom, plans, box_tiles):
    from nnunet_ctorg.inference.body_crop import BodyCropSettings, body_region
    from nnunet_ctorg.phantoms import generate_phantom

    image = phantom.to_sitk(phantom.ct)
    predictor = standin_predictor(plans)
    whole = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60)).predict_image(image)
    body = body_region(phantom.ct, image.GetSpacing()[::-1], 0, 1, BodyCropSettings())
    in_box = np.zeros(whole.shape, bool)
    in_box[body.box] = True
    in_body = body.region(tuple(slice(0, n) for n in whole.shape))
    assert np.all(in_body[phantom.structures > 0]) and np.all(in_box[in_body]) and not np.all(in_body[in_box])
    tiles = {}
    for mask in (False, True):
        chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60),
                                   BodyCropSettings(skip_tiles_outside_mask=mask))
        cropped = chunked.predict_image(image)
        inside = in_body if mask else in_box
        assert np.array_equal(cropped[inside], whole[inside]) and not cropped[~inside].any(), mask
        tiles[mask] = chunked.last_tiles
    assert tiles[False][0] / tiles[False][1] == pytest.approx(box_tiles)  # tiles off the body box: not run
    assert tiles[True][0] <= tiles[False][0] and tiles[True][1] == tiles[False][1]
    no_table = generate_phantom(seed=7, fov="thorax_abdomen", spacing=(3.0, 3.0, 4.0), table=False)
    table = (phantom.ct != no_table.ct) & (whole > 0)  # table voxels the stand-in labels without the crop
    assert table.any() and np.count_nonzero(cropped[table]) < 0.5 * np.count_nonzero(table)


@pytest.fixture(scope="module")
def head_knee_6mm():
    """A head-to-knee phantom with arms at the sides and the exam table, 6 mm voxels (210 x 97 x 97)."""
    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=3, fov="head_knee", spacing=(6.0, 6.0, 6.0))
    return ph.to_sitk(ph.ct)


@pytest.mark.parametrize("scan", ["head-to-knee phantom, arms, table", "real CT"])
def test_only_the_bodys_tiles_run_and_the_body_keeps_the_whole_scans_labels(scan, head_knee_6mm, real_ct_6mm,
                                                                             tmp_path):
    from nnunet_ctorg.inference.body_crop import BodyCropSettings, body_region
    from nnunet_ctorg.inference.probability_export import ProbabilityWriter

    image = head_knee_6mm if scan.startswith("head") else real_ct_6mm
    hu = sitk.GetArrayViewFromImage(image)
    predictor = standin_predictor(standin_plans(spacing=(5.0, 4.0, 4.0), patch=(16, 24, 24)))
    whole_writer = ProbabilityWriter(tmp_path / "whole", len(LABELS), hu.shape)
    whole = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=120)).predict_image(image, probabilities=whole_writer)
    whole_writer.close({})
    body = body_region(hu, image.GetSpacing()[::-1], 0, 1, BodyCropSettings())
    in_body = body.region(tuple(slice(0, n) for n in hu.shape))
    in_box = np.zeros(hu.shape, bool)
    in_box[body.box] = True
    assert whole[in_box & ~in_body].any()  # the stand-in labels voxels of the box outside the body
    runs = {}
    for mask in (False, True):
        chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=120),
                                   BodyCropSettings(skip_tiles_outside_mask=mask))
        writer = ProbabilityWriter(tmp_path / f"mask_{mask}", len(LABELS), hu.shape)
        labels = chunked.predict_image(image, probabilities=writer)
        writer.close({})
        runs[mask] = chunked.last_tiles, labels, np.load(tmp_path / f"mask_{mask}.npz")["probabilities"]
    (box_tiles, n_tiles), boxed, _ = runs[False]
    (mask_tiles, _), labels, probabilities = runs[True]
    assert np.array_equal(boxed[in_box], whole[in_box])
    assert np.array_equal(labels[in_body], whole[in_body]) and not labels[~in_body].any()
    reference = np.load(tmp_path / "whole.npz")["probabilities"]
    assert np.array_equal(probabilities[:, in_body], reference[:, in_body])
    assert np.all(probabilities[0][~in_body] == 1) and not probabilities[1:][:, ~in_body].any()
    assert mask_tiles <= box_tiles <= n_tiles  # the real CT's abdomen fills its field of view: every tile runs
    if scan.startswith("head"):  # arms, legs apart, neck: a box around them holds many tiles of air alone
        assert mask_tiles < 0.8 * box_tiles < 0.8 * n_tiles


def test_the_bodys_tiles_keep_the_organs_labels_where_the_image_edge_cuts_the_body(real_ct_dir):
    # a large patient: the image edge cuts lungs, stomach and colon gas open (the real CT, 20 % off each side)
    from nnunet_ctorg.inference.body_crop import BodyCropSettings

    ct = sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))[24:98]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz")))[:, :, 24:98]
    predictor = standin_predictor(standin_plans(spacing=(5.0, 4.0, 4.0), patch=(16, 24, 24)))
    whole = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=120)).predict_image(ct)
    body = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=120), BodyCropSettings()).predict_image(ct)
    lungs = np.isin(seg, [10, 11, 12, 13, 14])  # TotalSegmentator's five lobes
    assert np.count_nonzero(whole[lungs]) > 1000  # the stand-in labels voxels of the lungs
    assert np.array_equal(body[seg > 0], whole[seg > 0])


def test_body_box_runs_every_tile_of_the_network_voxels_its_export_reads():
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from nnunet_ctorg.inference.slab_resampling import SlabResampler

    chunked = ChunkedPredictor(standin_predictor(standin_plans(spacing=(2.5, 4.0, 4.0), patch=(16, 8, 8))))
    crop_t, spacing_t, target = [112, 51, 61], [3.0, 6.0, 6.0], [2.5, 4.0, 4.0]
    net = [int(n) for n in compute_new_shape(crop_t, spacing_t, target)]
    for start in range(5, 9):
        box = (slice(start, start + 50), slice(start, start + 20), slice(start + 3, start + 30))
        grid = NetworkGrid([0, 1, 2], [0, 1, 2], 0, [(0, n) for n in crop_t], crop_t, net, spacing_t, target)
        keep = body_box_network_ranges(grid, [0, 0, 0], box, chunked.export_resampling)
        for d in range(3):
            # network values 1 inside the kept range, 1e6 outside: the box's export must read only ones
            profile = np.full(net[d], 1e6)
            profile[keep[d][0]:keep[d][1]] = 1.0
            shape = [1, 1, 1]
            shape[d] = net[d]
            values = np.broadcast_to(profile.reshape(shape), net).copy()
            reader = SlabResampler(net, crop_t, target, spacing_t, d, chunked.export_resampling)
            exported = reader.resample(values, 0, box[d].start, box[d].stop, out_dtype=np.float64)
            np.testing.assert_allclose(exported, 1.0, atol=1e-6)


def test_any_body_box_gives_the_whole_scans_labels_in_it(real_ct_6mm):
    hu = sitk.GetArrayFromImage(real_ct_6mm)
    spacing = real_ct_6mm.GetSpacing()[::-1]
    predictor = standin_predictor(standin_plans(spacing=(2.5, 4.0, 4.0), patch=(16, 8, 8)))
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60))
    whole = np.zeros(hu.shape, np.uint8)
    chunked.predict_array(hu, spacing, 0, whole)
    for start in (8, 11):
        box = (slice(start, start + 70), slice(start, start + 21), slice(start + 3, start + 30))
        labels = np.zeros(hu.shape, np.uint8)
        chunked.predict_array(hu, spacing, 0, labels, body_box=box)
        assert np.array_equal(labels[box], whole[box]), start
        assert chunked.last_tiles[0] < chunked.last_tiles[1]


@pytest.fixture()
def ct_folder(tmp_path):
    from nnunet_ctorg.phantoms import generate_phantom

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        ph = generate_phantom(seed=i, fov="abdomen", spacing=(8.0, 8.0, 8.0))
        sitk.WriteImage(ph.to_sitk(ph.ct), str(folder / f"case{i}_0000.nii.gz"))
    return folder


def _small_chunked() -> ChunkedPredictor:
    return ChunkedPredictor(standin_predictor(standin_plans(spacing=(8.0, 8.0, 8.0), patch=(8, 16, 16))),
                            ChunkSettings(chunk_mm=80))


def test_network_runs_once_before_the_base_ram_is_measured():
    """What the network's first run adds for good (kernels, thread pools) belongs to the base of the budget."""
    import torch

    predictor = standin_predictor(standin_plans(spacing=(8.0, 8.0, 8.0), patch=(8, 16, 16)))
    predictor.network.train()
    inputs = []
    hook = predictor.network.register_forward_pre_hook(lambda m, args: inputs.append((m.training, args[0])))
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=80))
    hook.remove()
    assert [(training, tuple(x.shape), float(torch.abs(x).max())) for training, x in inputs] == \
        [(False, (1, 1, 8, 16, 16), 0.0)]
    assert predictor.network.training and chunked.base_gb > 0  # its mode is given back


def test_folder_sharding_resume_and_failures(ct_folder, tmp_path):
    chunked = _small_chunked()
    one = predict_folder(chunked, ct_folder, tmp_path / "one", progress=False)
    assert one["predicted"] == ["case0", "case1", "case2"] and not one["failed"]
    parts = [predict_folder(chunked, ct_folder, tmp_path / "two", num_parts=2, part_id=k, progress=False)
             for k in (0, 1)]
    assert sorted(parts[0]["predicted"] + parts[1]["predicted"]) == one["predicted"]
    for case in one["predicted"]:
        a = sitk.ReadImage(str(tmp_path / "one" / f"{case}.nii.gz"))
        b = sitk.ReadImage(str(tmp_path / "two" / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        ct = sitk.ReadImage(str(ct_folder / f"{case}_0000.nii.gz"))
        assert a.GetSize() == ct.GetSize() and a.GetOrigin() == ct.GetOrigin() and a.GetPixelID() == sitk.sitkUInt8
    assert json.loads((tmp_path / "one" / "dataset.json").read_text())["labels"] == LABELS
    # an interrupted run: one output missing, a broken input added -> the rest is skipped, the broken one named
    (tmp_path / "one" / "case1.nii.gz").unlink()
    (ct_folder / "broken_0000.nii.gz").write_bytes(b"not a nifti")
    again = predict_folder(chunked, ct_folder, tmp_path / "one", continue_prediction=True, progress=False)
    assert again["predicted"] == ["case1"] and again["skipped"] == ["case0", "case2"]
    assert "broken: image" in again["failed"]["broken"] and "cannot be read" in again["failed"]["broken"]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "one").iterdir())
    with pytest.raises(ValueError, match="part_id"):
        predict_folder(chunked, ct_folder, tmp_path / "x", num_parts=2, part_id=2, progress=False)


def test_file_ending_duplicates_and_float_cts(ct_folder, tmp_path):
    import shutil

    from nnunet_ctorg.inference.folder_prediction import case_inputs

    chunked = _small_chunked()
    chunked.predictor.dataset_json["file_ending"] = ".mha"
    mha = tmp_path / "mha"
    mha.mkdir()
    image = sitk.ReadImage(str(ct_folder / "case0_0000.nii.gz"))
    sitk.WriteImage(image, str(mha / "case0_0000.mha"))
    # stored as float with whole HU values (as a CT with scl_slope is read): the same labels, kept as int16
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(mha / "floaty.mha"))
    shutil.copy(ct_folder / "case1_0000.nii.gz", mha / "case1_0000.nii.gz")  # not the model's ending: ignored
    summary = predict_folder(chunked, mha, tmp_path / "out", progress=False)
    assert summary["predicted"] == ["case0", "floaty"]
    a = sitk.ReadImage(str(tmp_path / "out" / "case0.mha"))
    b = sitk.ReadImage(str(tmp_path / "out" / "floaty.mha"))
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    sitk.WriteImage(image, str(mha / "case0.mha"))
    with pytest.raises(ValueError, match="case0.mha and case0_0000.mha are both case 'case0'"):
        case_inputs(mha, ".mha")
    broken = sitk.GetArrayFromImage(image).astype(np.float32)
    broken[3, 4, 5] = np.nan
    nan_image = sitk.GetImageFromArray(broken)
    nan_image.CopyInformation(image)
    (mha / "case0.mha").unlink()
    sitk.WriteImage(nan_image, str(mha / "nan.mha"))
    again = predict_folder(chunked, mha, tmp_path / "out", continue_prediction=True, progress=False)
    assert again["skipped"] == ["case0", "floaty"]
    assert "nan: the CT contains NaN or infinite values" in again["failed"]["nan"]


def test_postprocess_and_preview_options(ct_folder, tmp_path):
    chunked = _small_chunked()
    predict_folder(chunked, ct_folder, tmp_path / "out", postprocess=True, previews=True, progress=False)
    assert (tmp_path / "out" / "previews" / "case0.png").read_bytes()[:4] == b"\x89PNG"


def test_postprocess_and_preview_are_refused_before_predicting_when_over_the_budget(ct_folder, tmp_path):
    from nnunet_ctorg.inference.chunk_budgets import POSTPROCESS_BYTES_PER_VOXEL

    chunked = _small_chunked()
    shape, voxels = (640, 525, 525), 640 * 525 * 525
    chunked.chunks = ChunkSettings(max_ram_gb=chunked.base_gb + 1.0)
    chunked.check_whole_volume_steps(shape, 0, postprocess=True, previews=False, what="long")  # 0.82 GB: fits
    assert POSTPROCESS_BYTES_PER_VOXEL * voxels < 1024**3 < (POSTPROCESS_BYTES_PER_VOXEL + 2) * voxels
    with pytest.raises(ValueError, match=r"long: --postprocess hold\(s\) whole volumes of this scan: about "
                                         r"\d+\.\d GB are needed, more than --max_ram_gb"):
        chunked.check_whole_volume_steps(shape, 2 * voxels, postprocess=True, previews=False, what="long")  # + CT
    with pytest.raises(ValueError, match="--preview hold"):  # the CT and its LPS copy (2 x 2 B) + 4 B of labels
        chunked.check_whole_volume_steps(shape, 2 * voxels, postprocess=False, previews=True, what="long")
    chunked.chunks = ChunkSettings()
    chunked.check_whole_volume_steps(shape, 2 * voxels, postprocess=True, previews=True, what="long")  # no budget
    chunked.chunks = ChunkSettings(max_ram_gb=chunked.base_gb + 1e-4)
    summary = predict_folder(chunked, ct_folder, tmp_path / "out", postprocess=True, progress=False)
    assert not summary["predicted"] and "--postprocess hold(s) whole volumes" in summary["failed"]["case0"]
    assert not (tmp_path / "out" / "case0.nii.gz").exists()


# --- a real nnU-Net model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(module_nnunet_env):
    """A CTOrgIOUTrainer_tiny model on 8 mm phantoms with a 32^3 patch (256 mm), trained for 2 x 4 iterations."""
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.demo import add_cpu_demo_configuration
    from nnunet_ctorg.phantoms.cli import generate_dataset
    from tests.conftest import nnunet_command

    env_root = module_nnunet_env
    src = env_root / "ctorg"
    generate_dataset("ctorg", str(src), 5, "thorax_abdomen", (8.0, 8.0, 8.0), first_id=21, progress=False)
    raw = convert_ctorg_dataset(src, env_root / "nnUNet_raw", 992, "ChunkTiny")
    env = dict(os.environ)
    for cmd in (["nnUNetv2_plan_and_preprocess", "-d", "992", "-c", "3d_fullres", "-np", "1", "-npfp", "1",
                 "--no_pbar"],):
        subprocess.run([nnunet_command(cmd[0]), *cmd[1:]], check=True, capture_output=True, env=env)
    plans_file = env_root / "nnUNet_preprocessed" / raw.name / "nnUNetPlans.json"
    add_cpu_demo_configuration(plans_file)
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_cpu_demo"]["patch_size"] = [32, 32, 32]
    plans_file.write_text(json.dumps(plans, indent=2))
    proc = subprocess.run([nnunet_command("nnUNetv2_train"), "992", "3d_cpu_demo", "0", "-tr", "CTOrgIOUTrainer_tiny",
                           "-device", "cpu"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return env_root / "nnUNet_results" / raw.name / "CTOrgIOUTrainer_tiny__nnUNetPlans__3d_cpu_demo"


@pytest.mark.slow
def test_one_chunk_and_many_are_exactly_nnunets_prediction(tiny_model):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ctorg.inference.folder_prediction import load_predictor
    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=40, fov="abdomen", spacing=(5.0, 5.0, 6.0))
    image = ph.to_sitk(ph.ct)
    predictor = load_predictor(tiny_model, [0], use_mirroring=False)
    ours = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None)).predict_image(image)
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=100))
    in_chunks = chunked.predict_image(image)
    assert len(chunked.last_chunks) > 1
    path = tiny_model.parent / "one_case_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    data, props = SimpleITKIO().read_images([str(path)])
    theirs = predictor.predict_single_npy_array(data, props)
    assert np.array_equal(ours, theirs) and np.array_equal(in_chunks, theirs)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint_final.pth for fold\(s\) 3 \(available: 0\)"):
        load_predictor(tiny_model, [0, 3])


@pytest.mark.slow
@pytest.mark.parametrize("scan", ["head-to-knee phantom, arms, table", "real CT"])
def test_a_trained_model_keeps_nnunets_labels_in_the_body_with_its_tiles_only(tiny_model, head_knee_6mm,
                                                                               real_ct_6mm, scan):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ctorg.inference.body_crop import BodyCropSettings, body_region
    from nnunet_ctorg.inference.folder_prediction import load_predictor

    image = head_knee_6mm if scan.startswith("head") else real_ct_6mm
    predictor = load_predictor(tiny_model, [0], use_mirroring=False)
    path = tiny_model.parent / "body_tiles_case_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    data, props = SimpleITKIO().read_images([str(path)])
    theirs = predictor.predict_single_npy_array(data, props)
    assert np.count_nonzero(theirs) > 1000  # the trained model labels organs here
    chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=150), BodyCropSettings())
    ours = chunked.predict_image(image)
    hu = sitk.GetArrayViewFromImage(image)
    in_body = body_region(hu, image.GetSpacing()[::-1], 0, 1, BodyCropSettings()).region(
        tuple(slice(0, n) for n in hu.shape))
    assert np.array_equal(ours[in_body], theirs[in_body]) and not ours[~in_body].any()
    # this model's tiles are 256 mm wide: each meets the body (the stand-in tests above skip tiles)
    assert chunked.last_tiles[0] <= chunked.last_tiles[1]


@pytest.mark.slow
def test_cpu_openvino_keeps_a_trained_models_labels(tiny_model, real_ct_6mm):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ctorg.inference.folder_prediction import load_predictor

    # the real CT only: the phantom with arms and table doubled the time and checks nothing more here
    predictor = load_predictor(tiny_model, [0], use_mirroring=True)
    fast = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=150), cpu_openvino=True)
    path = tiny_model.parent / "openvino_case_0000.nii.gz"
    sitk.WriteImage(real_ct_6mm, str(path))
    theirs = predictor.predict_single_npy_array(*SimpleITKIO().read_images([str(path)]))
    ours = fast.predict_image(real_ct_6mm)
    classes = np.unique(theirs)
    assert len(classes) >= 4  # the trained model labels organs here
    for c in classes:  # the bar for an opt-in path: 99.9 % of each organ's voxels
        assert np.mean(ours[theirs == c] == c) >= 0.999, c
    # the network ran in OpenVINO, PyTorch's is back in place
    assert len(fast.openvino._compiled) == 1
    assert predictor.network.__class__.__name__ == "PlainConvUNet"


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--cpu_openvino", "--cpu_bf16"])
def test_the_command_with_a_cpu_option_writes_the_labels_and_exits_cleanly(tiny_model, real_ct_6mm, tmp_path,
                                                                           option):
    """What a user runs, in a process of its own: the option's libraries (OpenVINO, oneDNN's bf16 kernels) must also
    let the interpreter finalize; pytest's own process skips that step (tests/conftest.py)."""
    from nnunet_ctorg.inference.body_crop import BodyCropSettings
    from nnunet_ctorg.inference.chunk_steps import cpu_bf16_supported
    from nnunet_ctorg.inference.folder_prediction import load_predictor
    from tests.conftest import nnunet_command

    if option == "--cpu_bf16" and not cpu_bf16_supported():
        pytest.skip("this CPU has no bfloat16 instructions")
    (tmp_path / "in").mkdir()
    sitk.WriteImage(real_ct_6mm, str(tmp_path / "in" / "ct_0000.nii.gz"))
    out = tmp_path / "out"
    proc = subprocess.run([nnunet_command("nnunet_ctorg_predict_chunked"), "-i", str(tmp_path / "in"), "-o",
                           str(out), "-m", str(tiny_model), "-f", "0", "-device", "cpu", "--disable_tta",
                           "--chunk_mm", "150", option], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exact = ChunkedPredictor(load_predictor(tiny_model, [0], use_mirroring=False), ChunkSettings(chunk_mm=150),
                             BodyCropSettings())  # the command's default
    reference = exact.predict_image(real_ct_6mm)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nii.gz")))
    assert labels.shape == reference.shape and len(np.unique(reference)) >= 4
    assert np.mean(labels == reference) >= 0.99  # the option's labels (bf16: ~99.7 % per organ, see README)


def _peak_rss_of(args: list[str]) -> tuple[float, dict]:
    code = ("import sys, json; from nnunet_ctorg.inference.cli import predict_chunked_main; "
            "predict_chunked_main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((Path(args[args.index("-o") + 1]) / "chunked_prediction_summary_part0.json").read_text())
    return summary["peak_rss_gb"], summary


@pytest.mark.slow
def test_command_bounds_peak_ram_by_the_chunk(tiny_model, tmp_path):
    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=41, fov="head_knee", spacing=(2.0, 2.0, 2.0), noise_hu=5)  # 290 x 290 x 682
    (tmp_path / "in").mkdir()
    (tmp_path / "half").mkdir()
    sitk.WriteImage(ph.to_sitk(ph.ct), str(tmp_path / "in" / "long_0000.nii.gz"))
    sitk.WriteImage(ph.to_sitk(ph.ct)[:, :, :341], str(tmp_path / "half" / "long_0000.nii.gz"))
    common = ["-m", str(tiny_model), "-f", "0", "-device", "cpu", "--disable_tta", "--quiet"]
    long_in, half_in = ["-i", str(tmp_path / "in")], ["-i", str(tmp_path / "half")]
    whole_gb, whole = _peak_rss_of([*common, *long_in, "-o", str(tmp_path / "whole"), "--chunk_mm", "0"])
    chunk_gb, chunked = _peak_rss_of([*common, *long_in, "-o", str(tmp_path / "chunked"), "--chunk_mm", "150"])
    half_gb, _ = _peak_rss_of([*common, *half_in, "-o", str(tmp_path / "half_out"), "--chunk_mm", "150"])
    base_gb = chunked["base_rss_gb"]  # model and libraries, before the case
    # chunks of a fifth of the 1364 mm scan: below the one-chunk run, and flat in the scan's length
    assert chunk_gb < whole_gb and chunk_gb - base_gb <= 1.25 * (half_gb - base_gb), (chunk_gb, half_gb, base_gb)
    budget = round((chunk_gb + whole_gb) / 2, 2)  # below the whole image's peak
    budget_gb, in_budget = _peak_rss_of([*common, *long_in, "-o", str(tmp_path / "budget"), "--chunk_mm", "0",
                                         "--max_ram_gb", str(budget)])
    # the estimate that chose the chunks is in the summary; base_rss_gb includes the network's first run
    assert budget_gb <= in_budget["estimated_peak_gb"]["long"] <= budget, (budget_gb, in_budget, budget)
    assert "estimated_peak_gb" in whole and not whole["estimated_peak_gb"]  # no budget, no estimate
    whole = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "whole" / "long.nii.gz")))
    chunked = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "chunked" / "long.nii.gz")))
    # a real (2-epoch) model: chunks give the labels of one whole-scan chunk
    budget = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "budget" / "long.nii.gz")))
    assert whole.shape == chunked.shape == ph.ct.shape
    assert np.array_equal(chunked, whole) and np.array_equal(budget, whole)


@pytest.mark.slow
def test_command_errors_name_the_problem(tiny_model, tmp_path):
    from nnunet_ctorg.inference.cli import predict_chunked_main

    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit, match="no CT files"):
        predict_chunked_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-m", str(tiny_model), "-f",
                              "0", "-device", "cpu"])
    with pytest.raises(SystemExit, match="fold"):
        predict_chunked_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-m", str(tiny_model), "-f",
                              "1", "-device", "cpu"])
    with pytest.raises(SystemExit, match="-d .* or with -m"):
        predict_chunked_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")])


def test_next_chunk_preprocessed_in_a_thread_gives_the_same_labels(real_ct_6mm, monkeypatch):
    import threading

    predictor = standin_predictor(standin_plans(spacing=(2.5, 5.0, 5.0), patch=(32, 16, 16)), folds=2)
    assert not ChunkedPredictor(predictor).overlap  # on the CPU the network needs the cores: off by default
    reference = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60), overlap=False).predict_image(real_ct_6mm)
    overlapped = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=60), overlap=True)
    threads = set()
    read = NetworkSlices._normalized_block

    def recording_read(self, *args):
        threads.add(threading.current_thread().name)
        return read(self, *args)

    monkeypatch.setattr(NetworkSlices, "_normalized_block", recording_read)
    labels = overlapped.predict_image(real_ct_6mm)
    assert len(overlapped.last_chunks) >= 4 and np.array_equal(labels, reference)
    assert any(name.startswith("chunk-preprocessing") for name in threads)
    # a failure in the thread reaches the caller
    monkeypatch.setattr(NetworkSlices, "_normalized_block", lambda self, *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        overlapped.predict_image(real_ct_6mm)
    assert not [t for t in threading.enumerate() if t.name.startswith("chunk-preprocessing")]


def test_a_body_box_outside_the_scans_non_zero_voxels_gives_background(real_ct_6mm):
    """nnU-Net crops to the non-zero voxels first; a body box wholly outside them runs no tile, and every label
    of the output, whatever it held, is background."""
    hu = sitk.GetArrayFromImage(real_ct_6mm).copy()
    hu[..., :20] = 0
    spacing = real_ct_6mm.GetSpacing()[::-1]
    chunked = ChunkedPredictor(standin_predictor(standin_plans(spacing=(2.5, 4.0, 4.0), patch=(16, 8, 8))))
    labels = np.full(hu.shape, 7, np.uint8)
    chunked.predict_array(hu, spacing, 0, labels, body_box=(slice(0, hu.shape[0]), slice(0, hu.shape[1]),
                                                              slice(2, 15)))
    assert chunked.last_chunks == [] and not labels.any()


def test_multi_channel_models_are_refused_for_raw_scans():
    plans = standin_plans()
    plans["configurations"]["3d"]["normalization_schemes"] = ["CTNormalization", "CTNormalization"]
    plans["configurations"]["3d"]["use_mask_for_norm"] = [False, False]
    predictor = standin_predictor(plans)
    with pytest.raises(ValueError, match="takes 2 input channels"):
        ChunkedPredictor(predictor)


def test_case_inputs_default_to_nifti_and_refuse_every_second_channel(tmp_path):
    from nnunet_ctorg.inference.folder_prediction import case_inputs

    for name in ("a_0000.nii.gz", "b.nii.gz", "c.mha"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(case_inputs(tmp_path)) == ["a", "b"]
    for channel in (1, 9):
        (tmp_path / f"a_{channel:04d}.nii.gz").write_bytes(b"")
        with pytest.raises(ValueError, match=f"found channel {channel:04d}"):
            case_inputs(tmp_path)
        (tmp_path / f"a_{channel:04d}.nii.gz").unlink()
