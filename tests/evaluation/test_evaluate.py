"""The evaluation of folders: pairing, summaries, errors, ignore label, previews."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.evaluation.cli import evaluate_main
from nnunet_ctorg.evaluation.evaluate import evaluate_folders

LABELS = {"background": 0, "liver": 1, "kidneys": 2}


def _write(array, path, spacing=(1.0, 1.0, 2.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.fixture()
def folders(tmp_path):
    ref = np.zeros((12, 20, 20), np.uint8)
    ref[2:8, 2:10, 2:10] = 1
    ref[3:6, 12:16, 12:16] = 2
    pred = ref.copy()
    pred[2:8, 2:10, 8:10] = 0  # liver loses a quarter
    for case in ("a", "b"):
        _write(ref, tmp_path / "ref" / f"{case}.nii.gz")
        _write(pred, tmp_path / "pred" / f"{case}.nii.gz")
    (tmp_path / "pred" / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    return tmp_path


def test_folders_give_csv_and_summary(folders):
    summary = evaluate_folders(folders / "ref", folders / "pred", folders / "out", progress=False)
    rows = list(csv.DictReader(open(folders / "out" / "metrics_per_case.csv")))
    assert [(r["case"], r["organ"]) for r in rows] == [("a", "liver"), ("a", "kidneys"), ("b", "liver"),
                                                       ("b", "kidneys")]
    assert float(rows[0]["dsc"]) == pytest.approx(2 * 288 / (384 + 288))
    assert float(rows[1]["dsc"]) == 1.0
    assert float(rows[0]["volume_diff_ml"]) == pytest.approx(-96 * 2 / 1000)
    assert summary["organs"]["liver"]["dsc"]["mean"] == pytest.approx(2 * 288 / 672)
    assert summary["organs"]["liver"]["dsc"]["sd"] == 0.0
    assert json.loads((folders / "out" / "summary.json").read_text())["n_cases"] == 2
    assert "| liver | 0.857 ± 0.000" in (folders / "out" / "summary.md").read_text()


def test_missing_case_and_geometry_are_named(folders):
    (folders / "pred" / "b.nii.gz").unlink()
    with pytest.raises(ValueError, match="case b has no prediction"):
        evaluate_folders(folders / "ref", folders / "pred", folders / "out", progress=False)
    _write(np.zeros((12, 20, 20)), folders / "pred" / "b.nii.gz", spacing=(1.0, 1.0, 3.0))
    with pytest.raises(ValueError, match="b: reference and prediction geometry differ"):
        evaluate_folders(folders / "ref", folders / "pred", folders / "out", progress=False)
    assert not (folders / "out" / "summary.json").exists()


def test_unknown_label_value_and_organ(folders):
    _write(np.full((12, 20, 20), 7), folders / "pred" / "a.nii.gz")
    with pytest.raises(ValueError, match=r"a: prediction has label values \[7\]"):
        evaluate_folders(folders / "ref", folders / "pred", folders / "out", progress=False)
    with pytest.raises(ValueError, match="unknown organ 'spleen'"):
        evaluate_folders(folders / "ref", folders / "pred", folders / "out", organs=["spleen"], progress=False)


def test_ignore_label_voxels_are_left_out(tmp_path):
    labels = {"background": 0, "liver": 1, "ignore": 2}
    ref = np.zeros((6, 10, 10), np.uint8)
    ref[1:5, 1:5, 1:5] = 1
    ref[:, :, 6:] = 2
    pred = (ref == 1).astype(np.uint8)
    pred[:, :, 7:] = 1  # wrong, but only where the reference is "ignore"
    _write(ref, tmp_path / "ref" / "c.nii.gz")
    _write(pred, tmp_path / "pred" / "c.nii.gz")
    summary = evaluate_folders(tmp_path / "ref", tmp_path / "pred", tmp_path / "out", labels=labels, progress=False)
    assert summary["organs"]["liver"]["dsc"]["mean"] == 1.0
    assert list(summary["organs"]) == ["liver"]


def test_cli_with_tolerances_and_previews(folders, capsys):
    for case in ("a", "b"):
        _write(np.full((12, 20, 20), 40), folders / "ct" / f"{case}_0000.nii.gz")
    evaluate_main(["-ref", str(folders / "ref"), "-pred", str(folders / "pred"), "-o", str(folders / "out"),
                   "--tolerance_mm", "0.5", "--organ_tolerance", "kidneys=3", "--previews", str(folders / "ct"),
                   "--quiet"])
    assert "| kidneys |" in capsys.readouterr().out
    summary = json.loads((folders / "out" / "summary.json").read_text())
    assert summary["tolerance_mm"] == {"liver": 0.5, "kidneys": 3.0}
    png = (folders / "out" / "previews" / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="nnunet_ctorg_evaluate: error: .*not found"):
        evaluate_main(["-ref", str(folders / "nope"), "-pred", str(folders / "pred"), "-o", str(folders / "o2")])


def test_without_dataset_json_the_ids_in_the_files_name_the_organs(folders, capsys):
    (folders / "pred" / "dataset.json").unlink()
    summary = evaluate_folders(folders / "ref", folders / "pred", folders / "out", progress=False)
    assert list(summary["organs"]) == ["liver", "bladder"]  # ids 1 and 2 fit the default scheme
    assert summary["organs"]["liver"]["dsc"]["mean"] == pytest.approx(2 * 288 / 672)
    assert capsys.readouterr().out.strip() == (
        "no label map (-djfile) or dataset.json: the label ids of the reference and predicted files taken as the "
        "default scheme's 1 liver, 2 bladder")
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folders / "ref" / "a.nii.gz")))
    ref[ref == 2] = 12
    _write(ref, folders / "ref" / "a.nii.gz")
    summary = evaluate_folders(folders / "ref", folders / "pred", folders / "out", progress=False)
    assert list(summary["organs"]) == ["label_1", "label_2", "label_12"]
    assert summary["organs"]["label_12"]["dsc"]["n"] == 2  # 0 in case a (12 vs 2), 1 in b (both empty)
    assert summary["organs"]["label_12"]["dsc"]["mean"] == 0.5
    assert "named label_<id> (ids 1, 2, 12 do not all fit the default scheme's 1-8)" in capsys.readouterr().out


def test_preview_command_without_label_map(folders, capsys):
    from nnunet_ctorg.evaluation.cli import preview_main

    (folders / "pred" / "dataset.json").unlink()
    _write(np.full((12, 20, 20), 40), folders / "ct" / "a_0000.nii.gz")
    _write(np.full((12, 20, 20), 40), folders / "ct" / "b_0000.nii.gz")
    preview_main(["-i", str(folders / "ct"), "-s", str(folders / "pred"), "-o", str(folders / "png"),
                  "-ref", str(folders / "ref")])
    assert "taken as the default scheme's 1 liver, 2 bladder" in capsys.readouterr().out
    assert (folders / "png" / "a.png").read_bytes()[:4] == b"\x89PNG"
