"""Lung and bone labelers on phantoms (step by step) and on the real CT."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labelers import label_bones, label_lungs
from nnunet_ctorg.phantoms import STRUCTURE_IDS, generate_phantom


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def chest():
    return generate_phantom(seed=5, fov="thorax_abdomen", spacing=(3.0, 3.0, 4.0))


@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_lungs_found_with_trachea_and_without_table_air(chest, mode):
    hu, spacing = chest.ct.astype(np.float32), (4.0, 3.0, 3.0)
    lungs = label_lungs(hu, spacing, mode)
    truth = chest.organ_labels() == 3
    trachea = chest.structures == STRUCTURE_IDS["trachea"]
    assert dice(lungs, truth | trachea) > 0.95
    assert trachea[lungs].size and lungs[trachea].mean() > 0.9  # trachea stays attached (step 6)
    from nnunet_ctorg.body import body_mask

    outside = (hu < -150) & ~body_mask(hu)  # outside air and the table's foam core
    assert outside.sum() > 1000 and not (lungs & outside).any()
    import cc3d

    assert cc3d.connected_components(lungs & ~trachea, connectivity=26).max() >= 1


def test_paper_mode_takes_gas_for_a_lung_when_one_lung_is_missing_and_improved_does_not(chest):
    hu = chest.ct.astype(np.float32).copy()
    right = np.isin(chest.structures, [STRUCTURE_IDS[n] for n in STRUCTURE_IDS if n.endswith("_right")
                                       and n.startswith("lung_")])
    hu[right] = 40.0  # a collapsed right lung: the paper's 'two largest' must then pick up bowel gas
    truth = (chest.organ_labels() == 3) & ~right
    trachea = chest.structures == STRUCTURE_IDS["trachea"]
    import cc3d

    from nnunet_ctorg.body import body_mask

    pockets = cc3d.connected_components((hu < -150) & body_mask(hu), connectivity=26)
    gas = (pockets > 0) & ~np.isin(pockets, np.unique(pockets[truth | trachea]))  # air not reaching a lung
    paper = label_lungs(hu, (4.0, 3.0, 3.0), "paper")
    improved = label_lungs(hu, (4.0, 3.0, 3.0), "improved")
    assert gas.sum() > 100 and (paper & gas).sum() > 50
    assert dice(improved, truth | trachea) > 0.95
    assert not (improved & gas).any()


def test_bones_closed_filled_and_table_free(chest):
    hu = chest.ct.astype(np.float32)
    truth = chest.organ_labels() == 5
    for mode, minimum in (("paper", 0.6), ("improved", 0.8)):
        bones = label_bones(hu, (4.0, 3.0, 3.0), mode)
        assert dice(bones, truth) > minimum, mode
        assert not (bones & (chest.structures == 0) & (hu > 100) & (chest.organ_labels() == 0)).sum() > 0.05 * \
            bones.sum()
    # marrow inside the femurs and vertebral bodies (below 200 HU) is filled in by closing and hole filling
    cancellous = truth & (hu < 200) & (hu > 100)
    assert label_bones(hu, (4.0, 3.0, 3.0), "improved")[cancellous].mean() > 0.8
    # ribs are separate from the spine in the paper's 'largest component' but kept by the improved mode
    ribs = np.isin(chest.structures, [i for n, i in STRUCTURE_IDS.items() if n.startswith("rib_")])
    assert label_bones(hu, (4.0, 3.0, 3.0), "improved")[ribs].mean() > label_bones(hu, (4.0, 3.0, 3.0),
                                                                                  "paper")[ribs].mean()


def test_real_ct_modes_against_totalsegmentator(real_ct_dir):
    image = sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))
    hu, spacing = sitk.GetArrayFromImage(image).astype(np.float32), image.GetSpacing()[::-1]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz")))
    names = json.loads((real_ct_dir / "example_seg_labels.json").read_text())
    scheme = LabelScheme.load(None)
    ref = {o: np.isin(seg, [int(i) for i, n in names.items() if n in scheme.totalseg_structures(o)])
           for o in ("lungs", "bone")}
    lung = {m: dice(label_lungs(hu, spacing, m), ref["lungs"]) for m in ("paper", "improved")}
    bone = {m: dice(label_bones(hu, spacing, m), ref["bone"]) for m in ("paper", "improved")}
    assert lung["improved"] > 0.85 and lung["improved"] > lung["paper"] + 0.3
    assert bone["improved"] > 0.6 and bone["improved"] > bone["paper"]


def test_bad_input():
    with pytest.raises(ValueError, match="3-D"):
        label_lungs(np.zeros((5, 5)), (1, 1, 1))
    with pytest.raises(ValueError, match="mode"):
        label_bones(np.zeros((5, 5, 5)), (1, 1, 1), "fast")
    with pytest.raises(ValueError, match="NaN"):
        label_bones(np.full((5, 5, 5), np.nan), (1, 1, 1))
