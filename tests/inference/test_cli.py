"""The predict command's flags: the body crop is on unless ``--no_body_crop``."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from tests.inference.standin import standin_plans, standin_predictor


@pytest.fixture(scope="module")
def head_knee_folder(tmp_path_factory):
    """A folder with one head-to-knee phantom (arms, exam table; 6 mm voxels) named as nnU-Net's input."""
    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=3, fov="head_knee", spacing=(6.0, 6.0, 6.0))
    folder = tmp_path_factory.mktemp("in")
    sitk.WriteImage(ph.to_sitk(ph.ct), str(folder / "hk_0000.nii.gz"))
    return folder


def _run(folder, out, monkeypatch, *flags: str) -> tuple[np.ndarray, dict]:
    import nnunet_ctorg.inference.folder_prediction as folder_prediction
    from nnunet_ctorg.inference.cli import predict_chunked_main

    predictor = standin_predictor(standin_plans(spacing=(6.0, 6.0, 6.0), patch=(32, 32, 32)))
    monkeypatch.setattr(folder_prediction, "load_predictor", lambda *args, **kwargs: predictor)
    predict_chunked_main(["-i", str(folder), "-o", str(out), "-m", "stand-in", "-f", "0", "-device", "cpu",
                          "--chunk_mm", "150", "--quiet", *flags])
    summary = json.loads((out / "chunked_prediction_summary_part0.json").read_text())
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "hk.nii.gz"))), summary


def test_the_command_crops_to_the_body_unless_told_not_to(head_knee_folder, tmp_path, monkeypatch):
    from nnunet_ctorg.inference.body_crop import BodyCropSettings, body_region

    every, every_summary = _run(head_knee_folder, tmp_path / "every", monkeypatch, "--no_body_crop")
    default, summary = _run(head_knee_folder, tmp_path / "default", monkeypatch)
    explicit, _ = _run(head_knee_folder, tmp_path / "explicit", monkeypatch, "--body_crop")
    box, box_summary = _run(head_knee_folder, tmp_path / "box", monkeypatch, "--body_tiles", "box")
    image = sitk.ReadImage(str(head_knee_folder / "hk_0000.nii.gz"))
    hu = sitk.GetArrayViewFromImage(image)
    body = body_region(hu, image.GetSpacing()[::-1], 0, 1, BodyCropSettings())
    in_body = body.region(tuple(slice(0, n) for n in hu.shape))
    in_box = np.zeros(hu.shape, bool)
    in_box[body.box] = True
    assert every_summary["body_crop"] is None
    assert summary["body_crop"] == {"margin_mm": 10.0, "tiles": "mask"} and box_summary["body_crop"]["tiles"] == "box"
    run, grid = every_summary["tiles_run"]["hk"]
    assert run == grid  # --no_body_crop: nnUNetv2_predict's tiles, all of them
    (mask_run, mask_grid), (box_run, _) = summary["tiles_run"]["hk"], box_summary["tiles_run"]["hk"]
    assert mask_grid == grid and mask_run < box_run < grid
    # inside the body the default gives the labels of every tile; outside it background (the stand-in labels air)
    assert np.array_equal(default[in_body], every[in_body]) and not default[~in_body].any()
    assert every[~in_body].any() and np.array_equal(explicit, default)
    assert np.array_equal(box[in_box], every[in_box]) and not box[~in_box].any()


def test_body_crop_and_no_body_crop_exclude_each_other(tmp_path, capsys):
    from nnunet_ctorg.inference.cli import predict_chunked_main

    with pytest.raises(SystemExit):
        predict_chunked_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", "x", "--body_crop",
                              "--no_body_crop"])
    assert "not allowed with argument" in capsys.readouterr().err
