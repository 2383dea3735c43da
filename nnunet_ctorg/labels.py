"""Label schemes: the default unified CT organ scheme and TotalSegmentator's structure names.

The TotalSegmentator lists are the official ones: ``class_map["total_v1"]`` (104 structures, the
v1 dataset on Zenodo) and ``class_map["total"]`` (117, the v2.0.x datasets) of TotalSegmentator's
``totalsegmentator/map_to_binary.py`` (github.com/wasserth/TotalSegmentator), in id order.
"""

# TotalSegmentator v2 "total" task, ids 1..117 in this order.
TOTALSEG_V2_STRUCTURES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder",
    "liver", "stomach", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
    "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
    "thyroid_gland", "small_bowel", "duodenum", "colon",
    "urinary_bladder", "prostate", "kidney_cyst_left", "kidney_cyst_right",
    "sacrum", "vertebrae_S1", "vertebrae_L5", "vertebrae_L4",
    "vertebrae_L3", "vertebrae_L2", "vertebrae_L1", "vertebrae_T12",
    "vertebrae_T11", "vertebrae_T10", "vertebrae_T9", "vertebrae_T8",
    "vertebrae_T7", "vertebrae_T6", "vertebrae_T5", "vertebrae_T4",
    "vertebrae_T3", "vertebrae_T2", "vertebrae_T1", "vertebrae_C7",
    "vertebrae_C6", "vertebrae_C5", "vertebrae_C4", "vertebrae_C3",
    "vertebrae_C2", "vertebrae_C1", "heart", "aorta",
    "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right", "subclavian_artery_left",
    "common_carotid_artery_right", "common_carotid_artery_left",
    "brachiocephalic_vein_left", "brachiocephalic_vein_right",
    "atrial_appendage_left", "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein",
    "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
    "humerus_left", "humerus_right", "scapula_left", "scapula_right",
    "clavicula_left", "clavicula_right", "femur_left", "femur_right",
    "hip_left", "hip_right", "spinal_cord", "gluteus_maximus_left",
    "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left",
    "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
    "iliopsoas_right", "brain", "skull", "rib_left_1",
    "rib_left_2", "rib_left_3", "rib_left_4", "rib_left_5",
    "rib_left_6", "rib_left_7", "rib_left_8", "rib_left_9",
    "rib_left_10", "rib_left_11", "rib_left_12", "rib_right_1",
    "rib_right_2", "rib_right_3", "rib_right_4", "rib_right_5",
    "rib_right_6", "rib_right_7", "rib_right_8", "rib_right_9",
    "rib_right_10", "rib_right_11", "rib_right_12", "sternum",
    "costal_cartilages",
)

# Default unified scheme of nnunet-ctorg: CT-ORG's ids kept, spleen and pancreas added.
DEFAULT_LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "bladder": 2,
    "lungs": 3,
    "kidneys": 4,
    "bone": 5,
    "brain": 6,
    "spleen": 7,
    "pancreas": 8,
}

# CT-ORG annotates the first six organs of the default scheme (brain only where visible).
CTORG_LABELS: dict[str, int] = {name: i for name, i in DEFAULT_LABELS.items() if i <= 6}

# AbdomenCT-1K's label ids.
ABDOMENCT1K_LABELS: dict[str, int] = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}

# TotalSegmentator v1 ("total_v1"), ids 1..104 in this order. v1 has the heart as five chambers, the
# pulmonary artery and the face; it has no skull, sternum, costal cartilages, kidney cysts, vertebrae_S1
# (part of the sacrum), thyroid, prostate, spinal cord or the v2 neck and thoracic vessels.
TOTALSEG_V1_STRUCTURES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder",
    "liver", "stomach", "aorta", "inferior_vena_cava",
    "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
    "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
    "lung_lower_lobe_right", "vertebrae_L5", "vertebrae_L4", "vertebrae_L3",
    "vertebrae_L2", "vertebrae_L1", "vertebrae_T12", "vertebrae_T11",
    "vertebrae_T10", "vertebrae_T9", "vertebrae_T8", "vertebrae_T7",
    "vertebrae_T6", "vertebrae_T5", "vertebrae_T4", "vertebrae_T3",
    "vertebrae_T2", "vertebrae_T1", "vertebrae_C7", "vertebrae_C6",
    "vertebrae_C5", "vertebrae_C4", "vertebrae_C3", "vertebrae_C2",
    "vertebrae_C1", "esophagus", "trachea", "heart_myocardium",
    "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right", "heart_ventricle_right",
    "pulmonary_artery", "brain", "iliac_artery_left", "iliac_artery_right",
    "iliac_vena_left", "iliac_vena_right", "small_bowel", "duodenum",
    "colon", "rib_left_1", "rib_left_2", "rib_left_3",
    "rib_left_4", "rib_left_5", "rib_left_6", "rib_left_7",
    "rib_left_8", "rib_left_9", "rib_left_10", "rib_left_11",
    "rib_left_12", "rib_right_1", "rib_right_2", "rib_right_3",
    "rib_right_4", "rib_right_5", "rib_right_6", "rib_right_7",
    "rib_right_8", "rib_right_9", "rib_right_10", "rib_right_11",
    "rib_right_12", "humerus_left", "humerus_right", "scapula_left",
    "scapula_right", "clavicula_left", "clavicula_right", "femur_left",
    "femur_right", "hip_left", "hip_right", "sacrum",
    "face", "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left",
    "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left",
    "autochthon_right", "iliopsoas_left", "iliopsoas_right", "urinary_bladder",
)

TOTALSEG_STRUCTURES: dict[str, tuple[str, ...]] = {"v1": TOTALSEG_V1_STRUCTURES, "v2": TOTALSEG_V2_STRUCTURES}

# Every name of either version (v2 order, then the v1-only names): what a scheme may refer to.
TOTALSEG_ALL_STRUCTURES: tuple[str, ...] = TOTALSEG_V2_STRUCTURES + tuple(
    s for s in TOTALSEG_V1_STRUCTURES if s not in TOTALSEG_V2_STRUCTURES)

# Names that only one version has: the mask files present tell the versions apart.
TOTALSEG_V2_ONLY: tuple[str, ...] = tuple(s for s in TOTALSEG_V2_STRUCTURES if s not in TOTALSEG_V1_STRUCTURES)
TOTALSEG_V1_ONLY: tuple[str, ...] = tuple(s for s in TOTALSEG_V1_STRUCTURES if s not in TOTALSEG_V2_STRUCTURES)


def totalseg_structures(version: str) -> tuple[str, ...]:
    """The official structure names of TotalSegmentator ``"v1"`` (104) or ``"v2"`` (117), in id order."""
    if version not in TOTALSEG_STRUCTURES:
        raise ValueError(f"TotalSegmentator version must be 'v1' or 'v2', got {version!r}")
    return TOTALSEG_STRUCTURES[version]


def detect_totalseg_version(mask_names: set[str] | frozenset[str]) -> str | None:
    """``"v1"`` or ``"v2"`` from the structure names of one case's mask files; ``None`` if they do not tell."""
    v1 = bool(mask_names & set(TOTALSEG_V1_ONLY))
    v2 = bool(mask_names & set(TOTALSEG_V2_ONLY))
    return None if v1 == v2 else ("v1" if v1 else "v2")
