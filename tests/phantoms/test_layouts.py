"""Phantom datasets in the on-disk layouts of CT-ORG, TotalSegmentator and AbdomenCT-1K."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.io import same_geometry
from nnunet_ctorg.labels import TOTALSEG_V2_STRUCTURES
from nnunet_ctorg.phantoms import STRUCTURE_IDS
from nnunet_ctorg.phantoms.cli import generate_dataset
from nnunet_ctorg.phantoms.layouts import PhantomSettings

SPACING = (8.0, 8.0, 10.0)


def read(path):
    return sitk.ReadImage(str(path))


def test_ctorg_layout(tmp_path):
    counts = generate_dataset("ctorg", str(tmp_path), 2, "abdomen", SPACING, seed=5, first_id=20, progress=False)
    assert counts == {"written": 2, "skipped": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels-20.nii.gz", "labels-21.nii.gz",
                                                          "volume-20.nii.gz", "volume-21.nii.gz"]
    for n in (20, 21):
        volume, labels = read(tmp_path / f"volume-{n}.nii.gz"), read(tmp_path / f"labels-{n}.nii.gz")
        assert volume.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkFloat32
        assert same_geometry(volume, labels)
        values = sitk.GetArrayFromImage(labels)
        assert set(np.unique(values)) <= {0, 1, 2, 3, 4, 5}  # abdomen: no brain
        truth = PhantomSettings("abdomen", SPACING, seed=5).make(n)
        assert np.array_equal(values == 1, truth.structures == STRUCTURE_IDS["liver"])
        assert np.array_equal(sitk.GetArrayFromImage(volume), truth.ct)
    assert generate_dataset("ctorg", str(tmp_path), 2, "abdomen", SPACING, seed=5, first_id=20,
                            progress=False) == {"written": 0, "skipped": 2}


def test_totalsegmentator_v2_layout(tmp_path):
    generate_dataset("totalseg", str(tmp_path), 3, "thorax_abdomen", SPACING, seed=1, progress=False)
    assert (tmp_path / "meta.csv").read_bytes().startswith(b"\xef\xbb\xbfimage_id;age;")  # as v2.0.1
    with open(tmp_path / "meta.csv", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert len(rows[0]) == 11
    assert [r["image_id"] for r in rows] == ["s0000", "s0001", "s0002"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    case = tmp_path / "s0001"
    ct = read(case / "ct.nii.gz")
    files = sorted(p.name[:-7] for p in (case / "segmentations").iterdir())
    assert files == sorted(TOTALSEG_V2_STRUCTURES)
    truth = PhantomSettings("thorax_abdomen", SPACING, seed=1).make(1)
    rebuilt = np.zeros_like(truth.structures)
    for name in files:
        mask = read(case / "segmentations" / f"{name}.nii.gz")
        assert same_geometry(mask, ct) and mask.GetPixelID() == sitk.sitkUInt8
        rebuilt[sitk.GetArrayFromImage(mask) > 0] = STRUCTURE_IDS[name]
    assert np.array_equal(rebuilt, truth.structures)


def test_totalsegmentator_v1_lacks_v2_only_structures(tmp_path):
    generate_dataset("totalseg", str(tmp_path), 1, "abdomen", SPACING, version="v1", progress=False)
    names = {p.name[:-7] for p in (tmp_path / "s0000" / "segmentations").iterdir()}
    assert "sacrum" in names and not names & {"skull", "sternum", "vertebrae_S1"}
    sacrum = sitk.GetArrayFromImage(read(tmp_path / "s0000" / "segmentations" / "sacrum.nii.gz"))
    truth = PhantomSettings("abdomen", SPACING).make(0)
    assert sacrum.sum() == truth.mask("sacrum").sum() + truth.mask("vertebrae_S1").sum()


def test_abdomenct1k_layout(tmp_path):
    generate_dataset("abdomenct1k", str(tmp_path), 3, "abdomen", SPACING, progress=False, num_processes=2)
    for k in (1, 2, 3):
        image = read(tmp_path / f"AbdomenCT-1K-ImagePart{k}" / f"Case_{k:05d}_0000.nii.gz")
        mask = read(tmp_path / "Mask" / f"Case_{k:05d}.nii.gz")
        assert same_geometry(image, mask)
        assert set(np.unique(sitk.GetArrayFromImage(mask))) == {0, 1, 2, 3, 4}


def test_bad_requests_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        generate_dataset("msd", str(tmp_path), 1, "abdomen", SPACING, progress=False)
    with pytest.raises(ValueError, match="cases"):
        generate_dataset("ctorg", str(tmp_path), 0, "abdomen", SPACING, progress=False)
    with pytest.raises(ValueError, match="version"):
        generate_dataset("totalseg", str(tmp_path), 1, "abdomen", SPACING, version="v3", progress=False)
    assert not any(tmp_path.iterdir())
