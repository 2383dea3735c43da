"""Label schemes: the default unified CT organ scheme and TotalSegmentator's structure names."""

# TotalSegmentator v2 "total" task, ids 1..117 in this order (v1 had 104 structures).
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

# Structures TotalSegmentator v1 did not have (SPEC §6); v1 folded S1 into the sacrum.
TOTALSEG_V2_ONLY: tuple[str, ...] = ("skull", "sternum", "vertebrae_S1", "costal_cartilages")


def totalseg_structures(version: str) -> tuple[str, ...]:
    """Structure names of TotalSegmentator ``"v2"``, or the part of them ``"v1"`` also had."""
    if version not in ("v1", "v2"):
        raise ValueError(f"TotalSegmentator version must be 'v1' or 'v2', got {version!r}")
    return TOTALSEG_V2_STRUCTURES if version == "v2" else tuple(
        s for s in TOTALSEG_V2_STRUCTURES if s not in TOTALSEG_V2_ONLY)
