"""The phantom generator: determinism, anatomy, intensities, geometry, exam table."""

import json

import numpy as np
import pytest
from scipy import ndimage

from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labels import DEFAULT_LABELS
from nnunet_ctorg.phantoms import STRUCTURE_IDS, generate_phantom

# Mean HU bands per organ (non-contrast .. portal-venous, with partial volume at 3-6 mm).
HU_BANDS = {"liver": (30, 130), "spleen": (25, 135), "kidneys": (0, 200), "pancreas": (-20, 120),
            "lungs": (-900, -650), "bone": (150, 600), "bladder": (-10, 30)}


def test_same_seed_same_phantom_other_seed_other_phantom():
    a = generate_phantom(seed=3, fov="abdomen", spacing=(6, 6, 8))
    b = generate_phantom(seed=3, fov="abdomen", spacing=(6, 6, 8))
    c = generate_phantom(seed=4, fov="abdomen", spacing=(6, 6, 8))
    assert np.array_equal(a.ct, b.ct) and np.array_equal(a.structures, b.structures)
    assert a.ct.shape != c.ct.shape or not np.array_equal(a.ct, c.ct)
    assert not np.array_equal(a.organ_labels() == 1, c.organ_labels() == 1) or a.ct.shape != c.ct.shape


@pytest.mark.parametrize("contrast", [False, True])
def test_mean_hu_of_every_organ_is_in_its_band(contrast):
    ph = generate_phantom(seed=1, fov="thorax_abdomen", spacing=(3, 3, 4), contrast=contrast)
    labels = ph.organ_labels()
    for organ, (lo, hi) in HU_BANDS.items():
        values = ph.ct[labels == DEFAULT_LABELS[organ]]
        assert values.size > 50, organ
        assert lo <= values.mean() <= hi, (organ, values.mean())
    assert ph.ct[labels == 0][:1000].min() >= -1024
    # contrast raises enhancing organs
    plain = generate_phantom(seed=1, fov="thorax_abdomen", spacing=(3, 3, 4), contrast=False)
    if contrast:
        liver = DEFAULT_LABELS["liver"]
        assert ph.ct[labels == liver].mean() > plain.ct[plain.organ_labels() == liver].mean() + 25


def test_bands_hold_the_real_ct_too(real_ct_dir):
    """The HU bands above are those of real anatomy: they hold TotalSegmentator's organs in the real CT."""
    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz")))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz")))
    names = json.loads((real_ct_dir / "example_seg_labels.json").read_text())
    checked = 0
    for organ, (lo, hi) in HU_BANDS.items():
        ids = [int(i) for i, n in names.items() if n in LabelScheme.load(None).totalseg_structures(organ)]
        mask = np.isin(seg, ids)
        if mask.sum() > 500:
            assert lo <= ct[mask].mean() <= hi, (organ, ct[mask].mean())
            checked += 1
    assert checked >= 4


def test_structures_are_anatomically_placed(phantom):
    s = phantom.structures
    idx = {n: np.argwhere(s == STRUCTURE_IDS[n]).mean(0) for n in ("liver", "spleen", "kidney_left",
                                                                     "kidney_right", "heart", "urinary_bladder",
                                                                     "lung_upper_lobe_left", "lung_lower_lobe_left")}
    # array axes (z, y, x) with direction diag(-1, -1, 1): x index grows to the patient's right,
    # y index grows anteriorly, z index grows cranially.
    assert idx["liver"][2] > idx["spleen"][2]  # liver on the right
    assert idx["kidney_right"][2] > idx["kidney_left"][2]
    assert idx["lung_upper_lobe_left"][0] > idx["liver"][0] > idx["urinary_bladder"][0]  # cranio-caudal order
    assert idx["heart"][0] > idx["liver"][0]
    assert idx["kidney_left"][1] < idx["liver"][1]  # kidneys posterior of the liver centre


def test_geometry_spacing_direction_and_field_of_view():
    ph = generate_phantom(seed=0, fov="head_knee", spacing=(4.0, 5.0, 8.0))
    image = ph.to_sitk(ph.ct)
    assert image.GetSpacing() == (4.0, 5.0, 8.0)
    assert image.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    nz = ph.ct.shape[0]
    assert 1100 < nz * 8.0 < 1450  # head to knee
    names = ph.structure_names()
    for n in ("brain", "skull", "femur_left", "humerus_right", "urinary_bladder", "lung_upper_lobe_right"):
        assert n in names
    abdomen = generate_phantom(seed=0, fov="abdomen", spacing=(4.0, 4.0, 8.0)).structure_names()
    assert "brain" not in abdomen and "liver" in abdomen and "humerus_left" not in abdomen


def test_table_is_under_the_patient_and_not_connected_to_the_body(phantom):
    ct, labels = phantom.ct, phantom.structures
    components, _ = ndimage.label(ct > -300)
    body = components == components[tuple(np.argwhere(labels == STRUCTURE_IDS["liver"])[0])]
    organs = phantom.organ_labels()
    solid = (organs > 0) & (organs != DEFAULT_LABELS["lungs"])
    assert np.all(body[solid])  # solid organs and bones all belong to the one body component
    table = (ct > 150) & ~body
    assert table.sum() > 100
    # in every (z, x) column the table lies posterior (lower y index, direction -1) of the labels
    ny = ct.shape[1]
    j = np.arange(ny)[None, :, None]
    table_max = np.where(table, j, -1).max(1)
    labels_min = np.where(labels > 0, j, ny).min(1)
    both = (table_max >= 0) & (labels_min < ny)
    assert both.sum() > 100
    assert np.all(table_max[both] < labels_min[both])
    no_table = generate_phantom(seed=7, fov="thorax_abdomen", spacing=(3.0, 3.0, 4.0), table=False)
    assert (no_table.ct > 150).sum() < (ct > 150).sum() - table.sum() / 2


def test_organ_labels_follow_the_scheme(phantom):
    labels = phantom.organ_labels()
    assert set(np.unique(labels)) == set(DEFAULT_LABELS.values()) - {DEFAULT_LABELS["brain"]}
    lungs = np.isin(phantom.structures, [STRUCTURE_IDS[n] for n in STRUCTURE_IDS if n.startswith("lung_")])
    assert np.array_equal(labels == DEFAULT_LABELS["lungs"], lungs)


@pytest.mark.parametrize("kwargs,match", [({"fov": "legs"}, "fov"), ({"spacing": (1, 0, 1)}, "spacing"),
                                          ({"noise_hu": -1}, "noise_hu")])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_phantom(**kwargs)
