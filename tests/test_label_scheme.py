"""Label schemes: the default, user files and their validation."""

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
