"""Organ-aware cleanup on phantoms with added islands and holes."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.labels import DEFAULT_LABELS
from nnunet_ctorg.postprocessing.cli import main, postprocess_folder
from nnunet_ctorg.postprocessing.organ_cleanup import OrganRule, clean_segmentation, rules_for_labels

L = DEFAULT_LABELS


@pytest.fixture(scope="module")
def truth(phantom):
    return phantom.organ_labels()


def _damaged(truth):
    seg = truth.copy()
    z, y, x = np.argwhere(truth == L["liver"]).mean(axis=0).astype(int)
    seg[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] = 0  # hole inside the liver
    free = np.argwhere(truth == 0)
    spots = free[np.random.default_rng(0).choice(len(free), 6, replace=False)]
    for organ, (sz, sy, sx) in zip(("liver", "spleen", "lungs", "kidneys", "bone", "bladder"), spots):
        seg[sz, sy, sx] = L[organ]  # one-voxel islands (3*3*4 = 36 mm³)
    return seg, spots


def test_islands_removed_and_holes_filled(phantom, truth):
    seg, spots = _damaged(truth)
    spacing = phantom.spacing
    cleaned = clean_segmentation(seg, spacing, L)
    for sz, sy, sx in spots:
        assert cleaned[sz, sy, sx] == 0
    assert np.array_equal(cleaned, clean_segmentation(truth, spacing, L))
    # on the undamaged truth, cleanup changes nothing the rules do not ask for
    clean_truth = clean_segmentation(truth, spacing, L)
    changed = clean_truth != truth
    assert changed.sum() < 0.001 * np.count_nonzero(truth)
    for organ in ("liver", "lungs", "kidneys"):
        assert np.count_nonzero(clean_truth == L[organ]) >= np.count_nonzero(truth == L[organ]) - 5


def test_component_counts_follow_the_table(phantom, truth):
    import cc3d

    seg, _ = _damaged(truth)
    cleaned = clean_segmentation(seg, phantom.spacing, L)
    for organ, most in (("liver", 1), ("spleen", 1), ("lungs", 2), ("kidneys", 2)):
        assert cc3d.connected_components(cleaned == L[organ], connectivity=26).max() <= most, organ
    # ribs are separate components and stay
    n_bone = cc3d.connected_components(cleaned == L["bone"], connectivity=26).max()
    assert n_bone > 10


def test_holes_never_overwrite_other_organs():
    seg = np.zeros((9, 9, 9), np.uint8)
    seg[1:8, 1:8, 1:8] = L["liver"]
    seg[4, 4, 4] = L["kidneys"]  # enclosed by liver, but another organ
    seg[3, 3, 3] = 0
    out = clean_segmentation(seg, (1, 1, 1), L)
    assert out[3, 3, 3] == L["liver"] and out[4, 4, 4] == L["kidneys"]


def test_bone_keeps_holes_and_small_islands_go_by_volume():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[2:12, 2:12, 2:12] = L["bone"]
    seg[5:8, 5:8, 5:8] = 0  # marrow cavity / skull interior: kept
    seg[15, 15, 15] = L["bone"]  # 8 mm³ at 2 mm: removed (< 100 mm³)
    seg[14:17, 2:7, 2:7] = L["bone"]  # 75 voxels * 8 = 600 mm³: kept
    out = clean_segmentation(seg, (2, 2, 2), L)
    assert out[6, 6, 6] == 0 and out[15, 15, 15] == 0 and out[15, 4, 4] == L["bone"]
    rules = rules_for_labels(L, {"bone": {"min_island_mm3": 1000}})
    assert clean_segmentation(seg, (2, 2, 2), L, rules)[15, 4, 4] == 0


def test_rule_validation():
    with pytest.raises(ValueError, match="0"):
        OrganRule(max_components=0)
    with pytest.raises(ValueError, match="unknown organ 'heart'"):
        rules_for_labels(L, {"heart": {"max_components": 1}})
    with pytest.raises(ValueError, match="unknown fields"):
        rules_for_labels(L, {"liver": {"keep": 1}})


def test_folder_command_is_resumable_and_keeps_geometry(phantom, truth, tmp_path):
    seg, spots = _damaged(truth)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(phantom.to_sitk(seg), str(tmp_path / "in" / "p1.nii.gz"))
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"labels": L}))
    main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-djfile", str(dj)])
    out = sitk.ReadImage(str(tmp_path / "out" / "p1.nii.gz"))
    assert out.GetSpacing() == phantom.spacing and out.GetOrigin() == pytest.approx(phantom.origin)
    assert out.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayFromImage(out)[tuple(spots[0])] == 0
    summary = postprocess_folder(tmp_path / "in", tmp_path / "out", L, progress=False)
    assert summary["skipped"] == ["p1.nii.gz"] and not summary["written"]
    with pytest.raises(SystemExit, match="must differ"):
        main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "in"), "-djfile", str(dj)])


def test_folder_command_without_label_map_takes_the_default_scheme(phantom, truth, tmp_path, capsys):
    seg, _ = _damaged(truth)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(phantom.to_sitk(seg), str(tmp_path / "in" / "p1.nii.gz"))
    main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert "taken as the default scheme's 1 liver" in capsys.readouterr().out
    expected = clean_segmentation(seg, phantom.spacing, L)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "p1.nii.gz"))), expected)
