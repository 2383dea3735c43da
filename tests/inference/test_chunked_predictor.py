"""The chunked predictor: the chunk machinery with a pointwise stand-in network, then a real nnU-Net model."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.inference.body_crop import BodyCropSettings
from nnunet_ctorg.inference.chunked_predictor import (
    ChunkedPredictor,
    ChunkSettings,
    chunk_slices_for_budget,
    predict_folder,
)

LABELS = {"background": 0, "soft": 1, "bone": 2}


def _fake_predictor(patch_mm: float = 40.0):
    return SimpleNamespace(
        label_manager=SimpleNamespace(all_labels=[0, 1, 2], has_regions=False),
        configuration_manager=SimpleNamespace(preprocessor_class=lambda verbose: None, patch_size=[8, 8, 8],
                                              spacing=[patch_mm / 8] * 3),
        plans_manager=SimpleNamespace(transpose_forward=[0, 1, 2], plans={"plans_name": "fake"}),
        dataset_json={"labels": LABELS, "channel_names": {"0": "CT"}})


class PointwiseChunked(ChunkedPredictor):
    """A stand-in network whose probabilities depend on each voxel alone: chunking must not change them."""

    calls: list

    def chunk_logits(self, hu, spacing):
        self.calls = getattr(self, "calls", []) + [hu.shape]
        h = hu.astype(np.float32)
        yield from (-(h + 200) / 50, -np.abs(h - 60) / 50, (h - 300) / 50)


def test_chunked_equals_whole_and_every_slice_is_written(phantom):
    image = phantom.to_sitk(phantom.ct)
    whole = PointwiseChunked(_fake_predictor(), ChunkSettings(chunk_mm=None)).predict_image(image)
    chunked = PointwiseChunked(_fake_predictor(), ChunkSettings(chunk_mm=60, overlap_mm=12))
    axis, layout = chunked.layout_for(image)
    assert axis == 0 and len(layout) >= 3
    assert np.array_equal(chunked.predict_image(image), whole)
    assert max(s[0] for s in chunked.calls) < phantom.ct.shape[0]  # no call saw the whole scan


def test_body_crop_drops_the_table_and_keeps_the_patient(phantom):
    from nnunet_ctorg.phantoms import generate_phantom

    no_table = generate_phantom(seed=7, fov="thorax_abdomen", spacing=(3.0, 3.0, 4.0), table=False)
    image = phantom.to_sitk(phantom.ct)
    whole = PointwiseChunked(_fake_predictor(), ChunkSettings(chunk_mm=None)).predict_image(image)
    cropped = PointwiseChunked(_fake_predictor(), ChunkSettings(chunk_mm=60, overlap_mm=12), BodyCropSettings())
    labels = cropped.predict_image(image)
    organs = phantom.structures > 0
    assert np.array_equal(labels[organs], whole[organs])
    table = (phantom.ct != no_table.ct) & (whole > 0)
    assert table.any() and np.count_nonzero(labels[table]) < 0.5 * np.count_nonzero(table)
    assert all(s[1] * s[2] < phantom.ct.shape[1] * phantom.ct.shape[2] for s in cropped.calls)


def test_chunks_are_never_shorter_than_the_patch(phantom):
    image = phantom.to_sitk(phantom.ct)  # 4 mm slices
    auto = PointwiseChunked(_fake_predictor(patch_mm=400), ChunkSettings(overlap_mm=12))
    _, layout = auto.layout_for(image)
    assert len(layout) > 1 and all(stop - start >= 100 + 3 for start, stop in layout)  # 400 mm patch + 12 mm
    short = PointwiseChunked(_fake_predictor(patch_mm=400), ChunkSettings(chunk_mm=100, overlap_mm=12))
    with pytest.warns(UserWarning, match="shorter than the network's patch"):
        _, layout = short.layout_for(image)
    assert all(stop - start == 25 for start, stop in layout)


def test_a_scan_shorter_than_three_overlaps_is_one_chunk(real_ct_dir):
    image = sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))  # 30 slices of 3 mm: 90 mm < 3 x 50 mm
    chunked = PointwiseChunked(_fake_predictor(), ChunkSettings())
    assert chunked.layout_for(image) == (0, [(0, image.GetSize()[2])])
    whole = PointwiseChunked(_fake_predictor(), ChunkSettings(chunk_mm=None)).predict_image(image)
    assert np.array_equal(chunked.predict_image(image), whole)


def test_ram_budget_chooses_the_chunk_or_fails_clearly(phantom):
    slices = chunk_slices_for_budget(6.0, 1.0, 512 * 512, 9, 34, 512 * 512 * 600 * 3)
    assert 100 < slices < 400
    assert chunk_slices_for_budget(10.0, 1.0, 512 * 512, 9, 34, 0) > slices
    with pytest.raises(ValueError, match="--max_ram_gb 3 is too small"):
        chunk_slices_for_budget(3.0, 1.0, 512 * 512, 9, 34, 512 * 512 * 600 * 3)
    image = phantom.to_sitk(phantom.ct)
    chunked = PointwiseChunked(_fake_predictor(), ChunkSettings(chunk_mm=None, max_ram_gb=0.01))
    with pytest.raises(ValueError, match="too small"):
        chunked.layout_for(image)
    with pytest.raises(ValueError, match="max_ram_gb must be > 0"):
        ChunkSettings(max_ram_gb=0)
    with pytest.raises(ValueError, match="overlap_mm .120. must be smaller than chunk_mm .100."):
        ChunkSettings(chunk_mm=100, overlap_mm=120)


@pytest.fixture()
def ct_folder(tmp_path):
    from nnunet_ctorg.phantoms import generate_phantom

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        ph = generate_phantom(seed=i, fov="abdomen", spacing=(8.0, 8.0, 8.0))
        sitk.WriteImage(ph.to_sitk(ph.ct), str(folder / f"case{i}_0000.nii.gz"))
    return folder


def test_folder_sharding_resume_and_failures(ct_folder, tmp_path):
    chunked = PointwiseChunked(_fake_predictor(), ChunkSettings(chunk_mm=80, overlap_mm=16))
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


def test_postprocess_and_preview_options(ct_folder, tmp_path):
    chunked = PointwiseChunked(_fake_predictor(), ChunkSettings(chunk_mm=80, overlap_mm=16))
    predict_folder(chunked, ct_folder, tmp_path / "out", postprocess=True, previews=True, progress=False)
    assert (tmp_path / "out" / "previews" / "case0.png").read_bytes()[:4] == b"\x89PNG"


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
def test_one_chunk_is_exactly_nnunets_prediction(tiny_model):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ctorg.inference.chunked_predictor import load_predictor
    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=40, fov="abdomen", spacing=(5.0, 5.0, 6.0))
    image = ph.to_sitk(ph.ct)
    predictor = load_predictor(tiny_model, [0], use_mirroring=False)
    ours = ChunkedPredictor(predictor, ChunkSettings(chunk_mm=None)).predict_image(image)
    path = tiny_model.parent / "one_case_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    data, props = SimpleITKIO().read_images([str(path)])
    theirs = predictor.predict_single_npy_array(data, props)
    assert np.array_equal(ours, theirs)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint_final.pth for fold\(s\) 3 \(available: 0\)"):
        load_predictor(tiny_model, [0, 3])


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

    ph = generate_phantom(seed=41, fov="thorax_abdomen", spacing=(2.0, 2.0, 2.0), noise_hu=5)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(ph.to_sitk(ph.ct), str(tmp_path / "in" / "long_0000.nii.gz"))
    common = ["-i", str(tmp_path / "in"), "-m", str(tiny_model), "-f", "0", "-device", "cpu", "--disable_tta",
              "--quiet"]
    whole_gb, whole = _peak_rss_of([*common, "-o", str(tmp_path / "whole"), "--chunk_mm", "0"])
    chunk_gb, chunked = _peak_rss_of([*common, "-o", str(tmp_path / "chunked"), "--chunk_mm", "150"])
    base_gb = chunked["base_rss_gb"]  # model and libraries, before the case
    # chunks of a fifth of the scan: the memory above the model's stays well below the whole image's
    assert chunk_gb - base_gb < 0.6 * (whole_gb - base_gb), (chunk_gb, whole_gb, base_gb)
    budget = round((chunk_gb + whole_gb) / 2, 2)  # below the whole image's peak
    budget_gb, _ = _peak_rss_of([*common, "-o", str(tmp_path / "budget"), "--chunk_mm", "0", "--max_ram_gb",
                                 str(budget)])
    assert budget_gb <= budget, (budget_gb, budget)
    whole = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "whole" / "long.nii.gz")))
    chunked = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "chunked" / "long.nii.gz")))
    # a 2-epoch model with chunks shorter than its patch: agreement is not meaningful here (see the benchmark)
    assert whole.shape == chunked.shape == ph.ct.shape
    assert set(np.unique(chunked).tolist()) <= set(json.loads((tiny_model / "dataset.json").read_text())["labels"]
                                                  .values())


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
