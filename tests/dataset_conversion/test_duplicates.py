"""The same scan in several datasets: fingerprints, matching among many scans, confirmation, the merge."""

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.dataset_conversion.common import CaseJob, finish_dataset, write_case
from nnunet_ctorg.dataset_conversion.duplicates import (
    Fingerprint,
    GridMapping,
    candidate_matches,
    confirm_match,
    converted_cases,
    find_duplicates,
    fingerprint_array,
    fingerprint_path,
    load_fingerprint,
)
from nnunet_ctorg.dataset_conversion.merge import merge_datasets
from nnunet_ctorg.label_scheme import LabelScheme

CROP = (20, 95)  # the z-range of example_ct kept by the cropped copies
MERGE_CROP = (5, 25)  # the z-range of example_ct_sm (30 slices) kept by the second dataset's copy


def _image(array: np.ndarray, spacing=(0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def real_copies(hu: np.ndarray) -> dict[str, np.ndarray]:
    """The real CT as other datasets store it."""
    return {
        "flipped_transposed": hu.transpose(2, 1, 0)[::-1, :, ::-1].copy(),
        "float_intercept": (hu + 1024).astype(np.float32),  # raw values: the rescale intercept -1024 not applied
        "cropped": hu[CROP[0]:CROP[1]].copy(),
        "all_at_once": (hu[CROP[0] + 10:CROP[1]].transpose(1, 0, 2)[:, ::-1, :] - 1024).astype(np.float64),
    }


@pytest.fixture(scope="module")
def real_hu(real_ct_dir) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct.nii.gz"))).astype(np.int16)


@pytest.fixture(scope="module")
def pool(real_hu, real_ct_dir, tmp_path_factory) -> Path:
    """A folder laid out as a converted dataset: the real CT, TotalSegmentator's own 30-slice cut of it
    (``example_ct_sm``, as downloaded), four copies with new headers, 100 phantoms of other patients and one
    phantom anatomy at two noise levels."""
    import shutil

    from nnunet_ctorg.phantoms import generate_phantom

    folder = tmp_path_factory.mktemp("pool") / "Dataset050_Pool"
    (folder / "imagesTr").mkdir(parents=True)
    sitk.WriteImage(_image(real_hu), str(folder / "imagesTr" / "real_0000.nii.gz"))
    shutil.copyfile(real_ct_dir / "example_ct_sm.nii.gz", folder / "imagesTr" / "real_sm_0000.nii.gz")
    for k, (name, array) in enumerate(real_copies(real_hu).items()):
        direction = (0, 1, 0, 1, 0, 0, 0, 0, -1) if k % 2 else None
        sitk.WriteImage(_image(array, spacing=(1.0, 1.0, 1.0), origin=(-100.0 * k, 35.5, 7.0), direction=direction),
                        str(folder / "imagesTr" / f"copy_{name}_0000.nii.gz"))
    for seed in range(100, 200):
        phantom = generate_phantom(seed=seed, fov=("abdomen", "thorax_abdomen")[seed % 2], spacing=(8.0, 8.0, 8.0))
        sitk.WriteImage(phantom.to_sitk(phantom.ct), str(folder / "imagesTr" / f"phantom_{seed}_0000.nii.gz"))
    for noise in (8.0, 14.0):
        phantom = generate_phantom(seed=500, fov="abdomen", spacing=(8.0, 8.0, 8.0), noise_hu=noise)
        sitk.WriteImage(phantom.to_sitk(phantom.ct), str(folder / "imagesTr" / f"noise{noise:g}_0000.nii.gz"))
    return folder


def test_fingerprint_is_each_slice_deviation_along_each_axis_whatever_the_slab():
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 3000, size=(23, 17, 11)).astype(np.int16)
    fingerprint = fingerprint_array(array, slab=4)
    for axis in range(3):
        others = tuple(k for k in range(3) if k != axis)
        assert np.allclose(fingerprint.slice_std[axis], array.astype(np.float64).std(axis=others), atol=1e-9)
    for slab in (1, 5, 23, 64):
        again = fingerprint_array(array, slab=slab)
        assert all(np.array_equal(a, b) for a, b in zip(fingerprint.slice_std, again.slice_std))
    # exact for whole values: the same for any axis order and storage, and for an added constant
    moved = fingerprint_array((array.transpose(2, 0, 1)[::-1] + 1024).astype(np.float32))
    assert np.array_equal(moved.slice_std[1], fingerprint.slice_std[0])
    assert np.array_equal(moved.slice_std[0], fingerprint.slice_std[2][::-1])
    floats = fingerprint_array(array.astype(np.float64) + 0.25)
    assert np.allclose(floats.slice_std[0], fingerprint.slice_std[0], atol=1e-6)
    assert fingerprint.shape == (23, 17, 11)
    with pytest.raises(ValueError, match=r"3-D array, got shape \(4, 5\)"):
        fingerprint_array(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="slab must be >= 1, got 0"):
        fingerprint_array(array, slab=0)


def test_grid_mapping_puts_the_copy_on_the_grid_and_back():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 100, (9, 7, 5))
    b = np.transpose(a, (2, 0, 1))[:, ::-1, :][:, 2:8, :]  # b: x, z flipped and cut, y
    mapping = GridMapping((1, 2, 0), (True, False, False), (6, 0, 0))
    region, on_a = mapping.b_on_a(b, a.shape)
    assert region == (slice(1, 7), slice(0, 7), slice(0, 5)) and np.array_equal(on_a, a[region])
    region_b, on_b = mapping.inverse().b_on_a(a, b.shape)
    assert region_b == (slice(0, 5), slice(0, 6), slice(0, 7)) and np.array_equal(on_b, b)
    assert GridMapping.from_json(json.loads(json.dumps(mapping.to_json()))) == mapping
    far = GridMapping((0, 1, 2), (False, False, False), (50, 0, 0))
    assert far.b_on_a(a, a.shape)[1].size == 0


def test_every_copy_of_the_real_ct_is_found_among_a_hundred_scans_and_nothing_else(pool, real_hu):
    cases = converted_cases(pool)
    assert len(cases) == 2 + 4 + 100 + 2
    confirmed, rejected = find_duplicates(cases)
    copies = {"real", "real_sm", *(f"copy_{name}" for name in real_copies(real_hu))}
    found = {frozenset(k.split("/")[1] for k in (d.case_a, d.case_b)) for d in confirmed}
    assert found == {frozenset(p) for p in combinations(sorted(copies), 2)}  # no phantom, no noise pair
    arrays = {c.case: sitk.GetArrayFromImage(sitk.ReadImage(str(c.image))) for c in cases if c.case in copies}
    for d in confirmed:  # the recorded mapping and offset give one copy's voxels from the other's
        a, b = arrays[d.case_a.split("/")[1]], arrays[d.case_b.split("/")[1]]
        region, on_a = d.mapping.b_on_a(b, a.shape)
        assert on_a.shape == a[region].shape and np.array_equal(on_a - d.intensity_offset, a[region])
        assert d.max_deviation_hu == 0 and d.overlap_voxels == a[region].size
    by_pair = {frozenset(k.split("/")[1] for k in (d.case_a, d.case_b)): d for d in confirmed}
    cut = by_pair[frozenset({"real", "real_sm"})]  # the README: example_ct_sm is slices 82-111 of example_ct
    assert cut.slices_a == (82, 112) if cut.case_a.endswith("real") else cut.slices_a == (0, 30)
    crop = by_pair[frozenset({"real", "copy_cropped"})]
    assert crop.slices_a == CROP if crop.case_a.endswith("real") else crop.slices_a == (0, CROP[1] - CROP[0])
    offset = by_pair[frozenset({"real", "copy_float_intercept"})]
    assert offset.intensity_offset == (1024 if offset.case_a.endswith("real") else -1024)
    # the fingerprints were computed from the images and stored beside them
    assert fingerprint_path(pool, "phantom_100").is_file()
    assert not [m for m in rejected if "phantom" in m.case_a and "phantom" in m.case_b]


def test_a_near_copy_is_not_confirmed(real_hu):
    """Same slice deviations (a flipped copy with one voxel changed by 2 HU) pass the fingerprint, not the voxels."""
    other = real_hu[:, ::-1].copy()
    other[50, 40, 30] += 2
    prints = {"a": fingerprint_array(real_hu), "b": fingerprint_array(other)}
    matches = candidate_matches(prints)
    assert {(m.axis_a, m.axis_b, m.reversed) for m in matches} == {(0, 0, False), (1, 1, True), (2, 2, False)}
    assert all(confirm_match(m, real_hu, other) is None for m in matches)
    exact = real_hu[:, ::-1].copy()
    assert confirm_match(candidate_matches({"a": prints["a"], "b": fingerprint_array(exact)})[0], real_hu, exact)


def test_nothing_matches_flat_or_short_scans():
    flat = Fingerprint((40, 8, 8), (np.zeros(40), np.zeros(8), np.zeros(8)))
    assert candidate_matches({"a": flat, "b": flat}) == []
    rng = np.random.default_rng(3)
    short = rng.normal(0, 100, (6, 7, 7)).round()  # fewer than MIN_OVERLAP_SLICES along every axis
    assert candidate_matches({"a": fingerprint_array(short), "b": fingerprint_array(short.copy())}) == []


# --------------------------------------------------------------------------------------------------------
# The merge of two datasets that share the real CT


def _organs(seg: np.ndarray, names: dict[int, str]) -> dict[str, np.ndarray]:
    by_name = {v: int(k) for k, v in names.items()}
    bones = ("vertebrae_", "rib_", "sacrum", "hip_", "femur_", "sternum", "costal")
    pick = {"liver": ["liver"], "kidneys": ["kidney_left", "kidney_right"], "lungs": [n for n in by_name if
            n.startswith("lung_")], "spleen": ["spleen"], "pancreas": ["pancreas"], "bladder": ["urinary_bladder"],
            "bone": [n for n in by_name if n.startswith(bones)], "brain": ["brain"]}
    return {organ: np.isin(seg, [by_name[n] for n in structures if n in by_name]) for organ, structures in
            pick.items()}


def _labels(organs: dict[str, np.ndarray], which: list[str], ids: dict[str, int]) -> np.ndarray:
    out = np.zeros(next(iter(organs.values())).shape, dtype=np.uint8)
    for organ in sorted(which, key=ids.get):
        out[organs[organ]] = ids[organ]
    return out


@pytest.fixture()
def shared_scan(real_ct_dir, nnunet_env):
    """Dataset061 (CT-ORG-like: every organ but spleen and pancreas) holds the real CT with its TotalSegmentator
    reference (example_ct_sm); Dataset062 (AbdomenCT-1K-like: liver, kidneys, spleen, pancreas) holds it transposed,
    flipped, cut to MERGE_CROP and without the intercept."""
    raw = nnunet_env / "nnUNet_raw"
    real_hu = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz")))
    scheme = LabelScheme.load(None)
    ids = scheme.labels
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz")))
    organs = _organs(seg, json.loads((real_ct_dir / "example_seg_labels.json").read_text()))

    def store(array):  # the second dataset's way of storing the scan
        return array[MERGE_CROP[0]:MERGE_CROP[1]].transpose(2, 1, 0)[:, ::-1, :]

    def build(dataset, case, source, array, labels, annotated):
        out = raw / dataset
        record = {"source": source, "source_case": case, "annotated": sorted(ids[o] for o in annotated),
                  "partial": []}
        write_case(out, CaseJob(case, "Tr", {}), _image(array), labels, record)
        (out / "imagesTr").mkdir(exist_ok=True)
        finish_dataset(out, scheme, "test")

    a_organs = ["liver", "bladder", "lungs", "kidneys", "bone", "brain"]
    b_organs = ["liver", "kidneys", "spleen", "pancreas"]
    build("Dataset061_A", "ctorg_001", "ctorg", real_hu, _labels(organs, a_organs, ids), a_organs)
    b_labels = _labels(organs, b_organs, ids)
    build("Dataset062_B", "abdomenct1k_00001", "abdomenct1k", np.ascontiguousarray(store(real_hu + 1024)),
          np.ascontiguousarray(store(b_labels)), b_organs)
    return raw, organs, ids, a_organs, b_organs


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_merge_unites_the_copies_annotations_on_the_larger_copy(shared_scan, nnunet_env):
    raw, organs, ids, a_organs, b_organs = shared_scan
    out = merge_datasets([61, 62], raw, 70, "Merged", "background")
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["ctorg_001.nii.gz"]
    merged = _read(out / "labelsTr" / "ctorg_001.nii.gz")
    expected = _labels(organs, a_organs, ids)  # the CT-ORG-like copy's labels ...
    lo, hi = MERGE_CROP
    slab = expected[lo:hi]
    for organ in ("spleen", "pancreas"):  # ... with the other copy's organs on its slices, where it has background
        slab[(slab == 0) & organs[organ][lo:hi]] = ids[organ]
    assert (merged == ids["spleen"]).sum() > 500 and (merged == ids["pancreas"]).sum() > 100
    assert np.array_equal(merged, expected)
    record = json.loads((out / "annotations" / "ctorg_001.json").read_text())
    assert record["annotated"] == sorted(ids[o] for o in a_organs)
    assert record["annotated_slices"] == {str(ids[o]): {"axis": 0, "range": list(MERGE_CROP)}
                                          for o in ("spleen", "pancreas")}
    copy = record["duplicates"][0]
    assert copy["case"] == "abdomenct1k_00001" and copy["shared_organs_from"] == "ctorg"
    assert copy["dice"] == {str(ids["liver"]): 1.0, str(ids["kidneys"]): 1.0}
    summary = json.loads((out / "conversion_summary.json").read_text())["duplicates"]
    assert summary["merged"] == {"ctorg_001": ["abdomenct1k_00001"]} and len(summary["pairs"]) == 1


def test_ignore_strategy_ignores_only_outside_the_slices_a_copy_annotates(shared_scan):
    """The first copy annotates every organ but spleen and pancreas, which the cropped copy annotates: the
    unlabelled body voxels are unknown (ignore) outside the cropped copy's slices only."""
    from nnunet_ctorg.body import body_mask

    raw, organs, ids, a_organs, _ = shared_scan
    out = merge_datasets([61, 62], raw, 71, "MergedIgnore", "ignore")
    merged = _read(out / "labelsTr" / "ctorg_001.nii.gz")
    body = body_mask(_read(out / "imagesTr" / "ctorg_001_0000.nii.gz").astype(np.float32))
    outside = np.ones(merged.shape[0], dtype=bool)
    outside[MERGE_CROP[0]:MERGE_CROP[1]] = False
    first_copy = _labels(organs, a_organs, ids)
    ignore = len(ids)
    assert not (merged[~outside] == ignore).any()
    assert np.array_equal(merged[outside] == ignore, (first_copy[outside] == 0) & body[outside])
    assert (merged[outside] == ignore).sum() > 1000


@pytest.mark.parametrize("action", ["same_fold", "drop"])
def test_the_other_actions_keep_both_in_one_fold_or_drop_the_smaller_copy(shared_scan, nnunet_env, action):
    raw = shared_scan[0]
    out = merge_datasets([61, 62], raw, 72, f"Merged_{action}", "background", duplicates=action)
    kept = sorted(p.name[:-7] for p in (out / "labelsTr").iterdir())
    if action == "drop":
        assert kept == ["ctorg_001"]
        assert not json.loads((out / "annotations" / "ctorg_001.json").read_text()).get("duplicates")
    else:
        assert kept == ["abdomenct1k_00001", "ctorg_001"]
        groups = {json.loads((out / "annotations" / f"{c}.json").read_text())["fold_group"] for c in kept}
        assert groups == {"same scan as ctorg_001"}


def test_copies_that_disagree_are_flagged_not_merged(shared_scan, capsys):
    raw, organs, ids, *_ = shared_scan
    label_path = raw / "Dataset062_B" / "labelsTr" / "abdomenct1k_00001.nii.gz"
    labels = sitk.ReadImage(str(label_path))
    array = sitk.GetArrayFromImage(labels)
    liver = array == ids["liver"]
    array[liver] = 0
    array[np.roll(liver, 12, axis=2) & (array == 0)] = ids["liver"]  # the liver moved by 12 voxels
    moved = sitk.GetImageFromArray(array)
    moved.CopyInformation(labels)
    sitk.WriteImage(moved, str(label_path))
    out = merge_datasets([61, 62], raw, 73, "MergedFlag", "background", progress=True)
    printed = capsys.readouterr().out
    assert "flagged: ctorg_001 and abdomenct1k_00001 are one scan but disagree" in printed
    assert ("duplicates (union): 1 pair(s) of one scan; 0 copy(ies) merged into 0 case(s), 0 dropped, 1 kept in the "
            "fold of their copy, 1 flagged") in printed
    assert sorted(p.name[:-7] for p in (out / "labelsTr").iterdir()) == ["abdomenct1k_00001", "ctorg_001"]
    summary = json.loads((out / "conversion_summary.json").read_text())["duplicates"]
    assert summary["merged"] == {} and summary["same_fold"] == {"ctorg_001": ["abdomenct1k_00001"]}


def test_conversion_writes_the_fingerprint_of_the_image_it_writes(shared_scan, real_ct_dir):
    real_hu = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz")))
    stored = load_fingerprint(fingerprint_path(shared_scan[0] / "Dataset061_A", "ctorg_001"))
    assert stored.shape == real_hu.shape
    assert all(np.array_equal(a, b) for a, b in zip(stored.slice_std, fingerprint_array(real_hu).slice_std))


def test_find_duplicates_command_lists_the_pair_with_its_evidence(shared_scan, tmp_path):
    raw = shared_scan[0]
    evidence = tmp_path / "dups.json"
    run = subprocess.run([sys.executable, "-c", "from nnunet_ctorg.dataset_conversion.cli import "
                          "find_duplicates_main; find_duplicates_main()", "-i", "61", "62", "-o", str(raw),
                          "--json", str(evidence)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Dataset061_A/ctorg_001 == Dataset062_B/abdomenct1k_00001" in run.stdout
    assert "1 pair(s) of one scan among 2 case(s) of 2 dataset(s)" in run.stdout
    report = json.loads(evidence.read_text())
    assert report["duplicates"][0]["intensity_offset"] == 1024.0
    bad = subprocess.run([sys.executable, "-c", "from nnunet_ctorg.dataset_conversion.cli import "
                          "find_duplicates_main; find_duplicates_main()", "-i", "nowhere"], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "'nowhere' is neither a dataset id nor a folder" in bad.stderr


def test_bad_arguments_are_refused(shared_scan):
    raw = shared_scan[0]
    with pytest.raises(ValueError, match="duplicates must be one of .* got 'merge'"):
        merge_datasets([61, 62], raw, 74, "X", "background", duplicates="merge")
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['lits'\]"):
        merge_datasets([61, 62], raw, 74, "X", "background", duplicate_priority=("lits",))


def test_documented_duplicates_are_checked_against_what_the_fingerprints_find(real_ct_dir, tmp_path):
    """AbdomenCT-1K issue #28 (the known-bad table): Case_00297 and Case_00928 are both LiTS liver_74."""
    from nnunet_ctorg.dataset_conversion.duplicates import documented_groups, duplicate_report
    from nnunet_ctorg.phantoms import generate_phantom

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz")))
    other = generate_phantom(seed=3, fov="abdomen", spacing=(8.0, 8.0, 8.0)).ct
    out = tmp_path / "Dataset063_AbdomenCT1K"
    for case, source_case, array in (("abdomenct1k_00297", "Case_00297", hu), ("abdomenct1k_00928", "Case_00928",
                                     hu[:, :, ::-1].copy()), ("abdomenct1k_00001", "Case_00001", other)):
        write_case(out, CaseJob(case, "Tr", {}), _image(array), np.zeros(array.shape, np.uint8),
                   {"source": "abdomenct1k", "source_case": source_case, "annotated": [1]})
    cases = converted_cases(out)
    confirmed, rejected = find_duplicates(cases)
    groups = duplicate_report(confirmed, rejected, documented_groups(cases))["documented_groups"]
    assert groups == [{"group": "LiTS liver_74", "reference": "AbdomenCT-1K issue #28", "found": True,
                       "cases": ["Dataset063_AbdomenCT1K/abdomenct1k_00297",
                                 "Dataset063_AbdomenCT1K/abdomenct1k_00928"]}]
    # a documented pair that is not one scan here is reported as not found
    write_case(out, CaseJob("abdomenct1k_00928", "Tr", {}), _image(other[::-1].copy() + 1), np.zeros(other.shape,
               np.uint8), {"source": "abdomenct1k", "source_case": "Case_00928", "annotated": [1]})
    cases = converted_cases(out)
    confirmed, rejected = find_duplicates(cases)
    assert not duplicate_report(confirmed, rejected, documented_groups(cases))["documented_groups"][0]["found"]


def test_union_rules_priority_conflicts_partial_and_slices():
    from nnunet_ctorg.dataset_conversion.merge import union_labels

    labels = np.zeros((4, 3, 3), np.uint8)
    labels[:, 0, 0] = 1          # liver (both annotate it) on every slice
    labels[:, 1, 1] = 5          # bone, partial in this source
    copy_labels = np.zeros((2, 3, 3), np.uint8)  # the copy holds slices 1-2
    copy_labels[:, 0, 0] = 1
    copy_labels[0, 0, 1] = 1     # the copy's liver is one voxel larger
    copy_labels[:, 1, 1] = 7     # spleen where this case has bone: a conflict
    copy_labels[:, 2, 2] = 7
    region = (slice(1, 3), slice(0, 3), slice(0, 3))
    record = {"source": "totalseg", "annotated": [1, 5], "partial": [5]}
    copy = {"case": "b", "dataset": "B", "mapping": {}, "record": {"source": "abdomenct1k", "annotated": [1, 7],
                                                                   "partial": []}}
    out, merged = union_labels(labels, record, copy_labels, region, copy, ("ctorg", "abdomenct1k", "totalseg"))
    expected = labels.copy()
    expected[1, 0, 1] = 1                    # the copy's source wins the liver (abdomenct1k before totalseg)
    expected[1:3, 2, 2] = 7                  # its spleen where this case has background; the bone keeps its voxels
    assert np.array_equal(out, expected) and labels[1, 0, 1] == 0  # the input is not changed
    assert merged["annotated"] == [1, 5] and merged["annotated_slices"] == {"7": {"axis": 0, "range": [1, 3]}}
    assert merged["partial"] == [5]
    entry = merged["duplicates"][0]
    assert entry["shared_organs_from"] == "abdomenct1k" and entry["conflicting_voxels"] == 2
    assert entry["dice"] == {"1": 2 * 2 / (2 + 3)} and entry["organs_from_copy"] == [7, 1]
    assert entry["covers_whole_grid"] is False
    # this case's source first: its liver stays
    out, merged = union_labels(labels, record, copy_labels, region, copy, ("totalseg", "abdomenct1k"))
    expected[1, 0, 1] = 0
    assert np.array_equal(out, expected) and merged["duplicates"][0]["shared_organs_from"] == "totalseg"
    # the copy wins an organ it says is absent: this case's voxels of it go on the copy's slices only
    absent = {**copy, "record": {"source": "ctorg", "annotated": [5], "partial": []}}
    out, merged = union_labels(labels, record, np.zeros_like(copy_labels), region, absent, ("ctorg", "totalseg"))
    assert (out[1:3] == 5).sum() == 0 and (out[[0, 3]] == 5).sum() == 2
    assert merged["partial"] == []           # bone: the copy annotates it fully
    # a copy that covers the whole grid makes its organs annotated; a tie keeps this case's organs
    whole = {**copy, "record": {"source": "ctorg", "annotated": [5, 7], "partial": [7]}}
    full = np.zeros((4, 3, 3), np.uint8)
    out, merged = union_labels(labels, record, full, (slice(0, 4),) + region[1:], whole, ())
    assert np.array_equal(out, labels) and merged["duplicates"][0]["shared_organs_from"] == "totalseg"
    assert merged["annotated"] == [1, 5, 7] and merged["partial"] == [7] and "annotated_slices" not in merged
    # a copy that holds fewer voxels along the last axis: the slab is along that axis
    _, merged = union_labels(labels, record, np.zeros((4, 3, 2), np.uint8), (slice(0, 4), slice(0, 3), slice(1, 3)),
                             copy, ())
    assert merged["annotated_slices"] == {"7": {"axis": 2, "range": [1, 3]}}


def test_ignore_slab_only_when_every_missing_organ_has_one():
    from nnunet_ctorg.dataset_conversion.merge import _ignore_unknown

    hu = np.full((6, 12, 12), -1000, np.int16)
    hu[:, 2:10, 2:10] = 40  # a body
    labels = np.zeros(hu.shape, np.uint8)
    image = _image(hu)
    slab = {"7": {"axis": 0, "range": [2, 4]}}
    out, _ = _ignore_unknown(labels, image, [7], 9, {}, slab)
    assert (out[2:4] == 0).all() and (out[[0, 1, 4, 5]][:, 2:10, 2:10] == 9).all()
    out, _ = _ignore_unknown(labels, image, [7, 8], 9, {}, slab)  # organ 8 is unknown everywhere
    assert (out[:, 2:10, 2:10] == 9).all() and (out[:, :2] == 0).all()


def test_a_test_case_is_the_copy_kept_and_gets_the_training_copys_labels(shared_scan):
    raw, organs, ids, a_organs, b_organs = shared_scan
    b = raw / "Dataset062_B"
    for kind, name in (("images", "abdomenct1k_00001_0000.nii.gz"), ("labels", "abdomenct1k_00001.nii.gz")):
        (b / f"{kind}Ts").mkdir(exist_ok=True)
        (b / f"{kind}Tr" / name).rename(b / f"{kind}Ts" / name)
    out = merge_datasets([61, 62], raw, 75, "MergedTest", "background")
    assert not (out / "labelsTr").is_dir() or not list((out / "labelsTr").iterdir())
    merged = _read(out / "labelsTs" / "abdomenct1k_00001.nii.gz")
    lo, hi = MERGE_CROP
    expected = _labels(organs, sorted(set(a_organs) | set(b_organs)), ids)[lo:hi].transpose(2, 1, 0)[:, ::-1, :]
    assert np.array_equal(merged, expected)  # every organ of both copies, on the test copy's grid
    record = json.loads((out / "annotations" / "abdomenct1k_00001.json").read_text())
    assert record["annotated"] == sorted(ids[o] for o in set(a_organs) | set(b_organs))
