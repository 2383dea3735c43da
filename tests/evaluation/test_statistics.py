"""Organ statistics on the real CT and its TotalSegmentator reference."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.evaluation.cli import statistics_main
from nnunet_ctorg.evaluation.statistics import organ_statistics, statistics_of_files
from nnunet_ctorg.io import load_label_map


def test_real_ct_volumes_and_hu(real_ct_dir, tmp_path):
    labels = load_label_map(real_ct_dir / "example_seg_labels.json")
    stats = statistics_of_files(real_ct_dir / "example_ct_sm.nii.gz", real_ct_dir / "example_seg.nii.gz", labels)
    seg_img = sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz"))
    seg = sitk.GetArrayFromImage(seg_img)
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz")))
    voxel_ml = np.prod(seg_img.GetSpacing()) / 1000
    for organ in ("liver", "spleen", "kidney_left"):
        n = int(np.count_nonzero(seg == labels[organ]))
        assert n > 0
        assert stats[organ]["voxels"] == n
        assert stats[organ]["volume_ml"] == pytest.approx(n * voxel_ml)
        assert stats[organ]["mean_hu"] == pytest.approx(ct[seg == labels[organ]].mean())
    assert 20 < stats["liver"]["median_hu"] < 200  # soft tissue, not air or bone
    assert stats["brain"] == {"voxels": 0, "volume_ml": 0.0, "mean_hu": None, "median_hu": None}
    out = tmp_path / "stats.json"
    statistics_main(["-i", str(real_ct_dir / "example_ct_sm.nii.gz"), "-s", str(real_ct_dir / "example_seg.nii.gz"),
                     "-o", str(out), "-djfile", str(real_ct_dir / "example_seg_labels.json")])
    assert json.loads(out.read_text())["liver"] == pytest.approx(stats["liver"])


def test_geometry_mismatch_is_an_error(real_ct_dir):
    with pytest.raises(ValueError, match="example_seg: CT and segmentation geometry differ"):
        statistics_of_files(real_ct_dir / "example_ct.nii.gz", real_ct_dir / "example_seg.nii.gz",
                            load_label_map(real_ct_dir / "example_seg_labels.json"))


def test_shape_mismatch_in_arrays():
    with pytest.raises(ValueError, match="differ"):
        organ_statistics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3), np.uint8), (1, 1, 1), {"a": 1})


def test_statistics_without_label_map_use_the_ids_of_the_segmentation(real_ct_dir, tmp_path, capsys):
    labels = load_label_map(real_ct_dir / "example_seg_labels.json")  # TotalSegmentator's ids, up to 104
    out = tmp_path / "stats.json"
    statistics_main(["-i", str(real_ct_dir / "example_ct_sm.nii.gz"), "-s", str(real_ct_dir / "example_seg.nii.gz"),
                     "-o", str(out)])
    stats = json.loads(out.read_text())
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz")))
    assert sorted(stats) == sorted(f"label_{i}" for i in np.unique(seg) if i)
    assert stats[f"label_{labels['liver']}"]["voxels"] == int(np.count_nonzero(seg == labels["liver"]))
    assert "named label_<id>" in capsys.readouterr().out
