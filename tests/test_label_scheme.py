"""Label schemes: the default, user files and their validation."""

import hashlib
import json

import numpy as np
import pytest

from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labels import DEFAULT_LABELS
from nnunet_ctorg.phantoms import STRUCTURE_IDS


def test_default_scheme_keeps_ctorg_ids_and_maps_every_source():
    scheme = LabelScheme.load(None)
    assert scheme.labels == DEFAULT_LABELS
    assert list(scheme.lookup_table("ctorg", 6)) == [0, 1, 2, 3, 4, 5, 6]
    assert list(scheme.lookup_table("abdomenct1k", 4)) == [0, 1, 4, 7, 8]
    lungs = scheme.totalseg_structures("lungs")
    assert sorted(lungs) == sorted(["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                                    "lung_middle_lobe_right", "lung_lower_lobe_right"])
    bone = scheme.totalseg_structures("bone")
    assert {"sacrum", "vertebrae_S1", "rib_left_12", "skull", "sternum", "femur_right"} <= set(bone)
    assert "costal_cartilages" not in bone and "spinal_cord" not in bone
    assert scheme.organs_of("abdomenct1k") == ["liver", "kidneys", "spleen", "pancreas"]


def test_user_scheme_file(tmp_path):
    spec = {"labels": {"background": 0, "kidney_left": 1, "kidney_right": 2},
            "sources": {"totalseg": {"kidney_left": ["kidney_left"], "kidney_right": ["kidney_right"]}}}
    path = tmp_path / "scheme.json"
    path.write_text(json.dumps(spec))
    scheme = LabelScheme.load(path)
    assert scheme.organs_of("totalseg") == ["kidney_left", "kidney_right"]
    assert scheme.organs_of("ctorg") == []
    assert np.all(scheme.lookup_table("ctorg", 6) == 0)


@pytest.mark.parametrize("spec,match", [
    ({"labels": {"background": 0, "liver": 1}, "sources": {"totalseg": {"liver": ["livre"]}}},
     "unknown TotalSegmentator structure name 'livre'"),
    ({"labels": {"background": 0, "liver": 2}, "sources": {}}, "without gaps"),
    ({"labels": {"liver": 0}, "sources": {}}, "background"),
    ({"labels": {"background": 0, "liver": 1}, "sources": {"msd": {}}}, "unknown source 'msd'"),
    ({"labels": {"background": 0, "liver": 1}, "sources": {"ctorg": {"spleen": [3]}}}, "unknown organ 'spleen'"),
    ({"labels": {"background": 0, "liver": 1}, "sources": {"ctorg": {"liver": ["1"]}}}, "positive integers"),
    ({"labels": {"background": 0}}, "needs the keys"),
])
def test_bad_scheme_files_are_rejected_with_the_reason(tmp_path, spec, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=match):
        LabelScheme.load(path)


def test_missing_or_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError):
        LabelScheme.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{labels")
    with pytest.raises(ValueError, match="not valid JSON"):
        LabelScheme.load(tmp_path / "x.json")


def test_bundled_19_organ_scheme_converts_a_totalsegmentator_case(tmp_path):
    from pathlib import Path

    import SimpleITK as sitk

    import nnunet_ctorg.dataset_conversion as conversion
    from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset
    from nnunet_ctorg.phantoms.cli import generate_dataset
    from nnunet_ctorg.phantoms.layouts import PhantomSettings

    path = Path(conversion.__file__).parent / "schemes" / "salimi2025_19organs.json"
    scheme = LabelScheme.load(path)
    assert len(scheme.labels) == 20
    generate_dataset("totalseg", str(tmp_path / "ts"), 1, "thorax_abdomen", (8.0, 8.0, 10.0), progress=False)
    out = convert_totalseg_dataset(tmp_path / "ts", tmp_path / "raw", 61, scheme=scheme)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0000.nii.gz")))
    truth = PhantomSettings("thorax_abdomen", (8.0, 8.0, 10.0)).make(0)
    ribs = np.isin(truth.structures, [i for n, i in STRUCTURE_IDS.items() if n.startswith("rib_")])
    assert np.array_equal(labels == scheme.labels["ribs"], ribs)
    assert json.loads((out / "dataset.json").read_text())["labels"]["vertebrae"] == scheme.labels["vertebrae"]


def test_totalsegmentator_lists_are_the_official_ones():
    from nnunet_ctorg.labels import (
        TOTALSEG_V1_STRUCTURES,
        TOTALSEG_V2_STRUCTURES,
        detect_totalseg_version,
        totalseg_structures,
    )

    # ids from class_map["total_v1"] / ["total"] of TotalSegmentator's map_to_binary.py (1-based)
    v1 = dict(enumerate(TOTALSEG_V1_STRUCTURES, start=1))
    assert len(v1) == 104 and len(set(TOTALSEG_V1_STRUCTURES)) == 104
    assert (v1[7], v1[10], v1[44], v1[48], v1[49], v1[50], v1[92], v1[93], v1[104]) == (
        "aorta", "pancreas", "heart_myocardium", "heart_ventricle_right", "pulmonary_artery", "brain", "sacrum",
        "face", "urinary_bladder")
    v2 = dict(enumerate(TOTALSEG_V2_STRUCTURES, start=1))
    assert len(v2) == 117 and (v2[26], v2[51], v2[91], v2[116], v2[117]) == (
        "vertebrae_S1", "heart", "skull", "sternum", "costal_cartilages")
    # every name, in order: sha256 of the comma-joined names of class_map["total_v1"] and ["total"] as transcribed
    # from TotalSegmentator's map_to_binary.py (commit 0275d30) by an independent review
    assert hashlib.sha256(",".join(TOTALSEG_V1_STRUCTURES).encode()).hexdigest() == (
        "9eb24788c13e8d19b9a56fbca432453db41975bf44af3596d4161b8a2e1265de")
    assert hashlib.sha256(",".join(TOTALSEG_V2_STRUCTURES).encode()).hexdigest() == (
        "23d27ae49318ac1260030b2e336e7a859e691e28f87f78ef6b82a61542ac982d")
    assert totalseg_structures("v1") is TOTALSEG_V1_STRUCTURES
    assert detect_totalseg_version({"liver", "face"}) == "v1"
    assert detect_totalseg_version({"liver", "skull"}) == "v2"
    assert detect_totalseg_version({"liver", "spleen"}) is None
    assert detect_totalseg_version({"face", "skull"}) is None
    with pytest.raises(ValueError, match="'v3'"):
        totalseg_structures("v3")


def test_partial_annotation_is_part_of_the_scheme():
    scheme = LabelScheme.load(None)
    assert scheme.partial_ids("totalseg") == [5] and scheme.partial_ids("ctorg") == [5]
    assert scheme.partial_ids("abdomenct1k") == []
    heart = LabelScheme.from_dict({"labels": {"background": 0, "heart": 1},
                                   "sources": {"totalseg": {"heart": ["heart", "heart_*"]}}})
    assert heart.totalseg_structures("heart") == ["heart", "heart_myocardium", "heart_atrium_left",
                                                  "heart_ventricle_left", "heart_atrium_right",
                                                  "heart_ventricle_right"]  # v1 names are valid too
    with pytest.raises(ValueError, match="'partial' names 'ctorg'"):
        LabelScheme.from_dict({"labels": {"background": 0, "liver": 1}, "sources": {"ctorg": {"liver": [1]}},
                               "partial": {"ctorg": ["bone"]}})
