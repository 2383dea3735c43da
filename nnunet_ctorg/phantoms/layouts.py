"""Write phantoms in the exact on-disk layouts of CT-ORG, TotalSegmentator and AbdomenCT-1K.

- CT-ORG: ``volume-N.nii.gz`` and ``labels-N.nii.gz`` side by side, both float32; labels
  1 liver, 2 bladder, 3 lungs, 4 kidneys, 5 bone, 6 brain (brain only where in view).
- TotalSegmentator: ``meta.csv`` (``;``-separated; v2 as v2.0.1: UTF-8 byte-order mark and 11
  columns; v1: 6 columns) and per case ``<image_id>/ct.nii.gz`` plus
  ``<image_id>/segmentations/<structure>.nii.gz``, one binary mask per structure of the version's
  official list (v2: 117; v1: 104, ``nnunet_ctorg.labels``). In v1 the phantom's vertebrae_S1 is
  part of the sacrum, its kidney cysts part of the kidneys and its heart the ``heart_myocardium``
  file; the v2-only structures (skull, sternum, costal cartilages, ...) are not annotated.
- AbdomenCT-1K: images ``Case_XXXXX_0000.nii.gz`` spread over ``AbdomenCT-1K-ImagePart1..3``
  and masks ``Case_XXXXX.nii.gz`` in ``Mask``; labels 1 liver, 2 kidney, 3 spleen, 4 pancreas.

``quirks=True`` adds what the real downloads have beyond the plain layout: CT-ORG inside
``OrganSegmentations/`` (TCIA), every second case (odd index) of TotalSegmentator and AbdomenCT-1K
written with a slightly sheared sform and no qform (refused by SimpleITK, as ~140 TotalSegmentator
and ~30 AbdomenCT-1K cases), and the last AbdomenCT-1K image without a mask.

Every file is written atomically; a case whose files all exist is skipped (resumable).
"""

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_ctorg.io import atomic_path, write_image_atomic, write_text_atomic
from nnunet_ctorg.label_scheme import DEFAULT_SCHEME, LabelScheme
from nnunet_ctorg.labels import (
    ABDOMENCT1K_LABELS,
    CTORG_LABELS,
    TOTALSEG_V1_STRUCTURES,
    TOTALSEG_V2_STRUCTURES,
)
from nnunet_ctorg.phantoms.anatomy import Phantom, generate_phantom

LAYOUTS = ("ctorg", "totalseg", "abdomenct1k")

# Shear of the quirky NIfTI files: SimpleITK 2.5 accepts a qform-less sform up to about 1e-4 rad of shear
# and refuses it from about 1e-3 rad on ("ITK only supports orthonormal direction cosines").
SHEAR_RAD = 2e-3

# Where a v2 structure of the phantom goes in a v1 download (absent: not annotated in v1).
V1_FILE_OF = {**{s: s for s in TOTALSEG_V2_STRUCTURES if s in TOTALSEG_V1_STRUCTURES},
              "vertebrae_S1": "sacrum", "kidney_cyst_left": "kidney_left", "kidney_cyst_right": "kidney_right",
              "heart": "heart_myocardium"}

V2_META_COLUMNS = ["image_id", "age", "gender", "institute", "study_type", "split", "manufacturer", "scanner_model",
                   "kvp", "pathology", "pathology_location"]
V1_META_COLUMNS = V2_META_COLUMNS[:6]


def write_sheared_nifti(image, path: str | Path, shear_rad: float = SHEAR_RAD) -> None:
    """Write a SimpleITK image as NIfTI whose sform has a slight shear and whose qform is unset, as the real
    files SimpleITK refuses (TotalSegmentator issues #33 and #461, AbdomenCT-1K issue #6)."""
    import nibabel
    import SimpleITK as sitk

    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    matrix = lps_to_ras @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:, 1] += shear_rad * image.GetSpacing()[1] * matrix[:, 0] / np.linalg.norm(matrix[:, 0])
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = lps_to_ras @ np.array(image.GetOrigin())
    nii = nibabel.Nifti1Image(sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine)
    nii.set_qform(None, code=0)
    nii.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nibabel.save(nii, str(tmp))


def _write(image, path: Path, sheared: bool) -> None:
    (write_sheared_nifti if sheared else write_image_atomic)(image, path)

# The labels each public dataset would give the phantom's structures.
_TOTALSEG = DEFAULT_SCHEME["sources"]["totalseg"]
CTORG_TRUTH = LabelScheme.from_dict(
    {"labels": CTORG_LABELS, "sources": {"totalseg": {o: _TOTALSEG[o] for o in CTORG_LABELS if o != "background"}}})
ABDOMENCT1K_TRUTH = LabelScheme.from_dict(
    {"labels": ABDOMENCT1K_LABELS,
     "sources": {"totalseg": {"liver": ["liver"], "kidney": ["kidney_left", "kidney_right"], "spleen": ["spleen"],
                              "pancreas": ["pancreas"]}}})


@dataclass(frozen=True)
class PhantomSettings:
    """How the cases of one phantom dataset are generated (case k uses seed ``seed + k``)."""

    fov: str = "abdomen"
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)
    seed: int = 0
    table: bool = True

    def make(self, case_index: int) -> Phantom:
        return generate_phantom(seed=self.seed + case_index, fov=self.fov, spacing=self.spacing, table=self.table)


def ctorg_case_files(root: Path, case_id: int) -> tuple[Path, Path]:
    return root / f"volume-{case_id}.nii.gz", root / f"labels-{case_id}.nii.gz"


def write_ctorg_case(root: str | Path, case_id: int, phantom: Phantom) -> None:
    root = Path(root)
    volume, labels = ctorg_case_files(root, case_id)
    seg = phantom.organ_labels(CTORG_TRUTH)
    write_image_atomic(phantom.to_sitk(seg.astype(np.float32)), labels)
    write_image_atomic(phantom.to_sitk(phantom.ct.astype(np.float32)), volume)  # last: marks the case complete


def write_totalseg_case(root: str | Path, image_id: str, phantom: Phantom, version: str = "v2",
                        sheared: bool = False) -> None:
    """One case folder: ct.nii.gz and a mask file for every structure of the version's official list."""
    case = Path(root) / image_id
    if version not in ("v1", "v2"):
        raise ValueError(f"TotalSegmentator version must be 'v1' or 'v2', got {version!r}")
    names = TOTALSEG_V2_STRUCTURES if version == "v2" else TOTALSEG_V1_STRUCTURES
    for name in names:
        sources = [s for s in TOTALSEG_V2_STRUCTURES if (s if version == "v2" else V1_FILE_OF.get(s)) == name]
        ids = [TOTALSEG_V2_STRUCTURES.index(s) + 1 for s in sources]
        mask = np.isin(phantom.structures, ids).astype(np.uint8)
        _write(phantom.to_sitk(mask), case / "segmentations" / f"{name}.nii.gz", sheared)
    _write(phantom.to_sitk(phantom.ct), case / "ct.nii.gz", sheared)  # last: marks the case complete


def write_totalseg_meta(root: str | Path, rows: Sequence[dict[str, str]], version: str = "v2") -> None:
    """meta.csv as the release writes it: v2.0.1 with a UTF-8 byte-order mark and 11 columns, v1 with 6."""
    out = io.StringIO()
    columns = V2_META_COLUMNS if version == "v2" else V1_META_COLUMNS
    writer = csv.DictWriter(out, fieldnames=columns, delimiter=";", lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    text = ("\ufeff" if version == "v2" else "") + out.getvalue()
    write_text_atomic(text, Path(root) / "meta.csv")


def abdomenct1k_case_files(root: Path, case_number: int, n_cases: int) -> tuple[Path, Path]:
    part = 1 + (3 * (case_number - 1)) // max(n_cases, 1)
    name = f"Case_{case_number:05d}"
    return root / f"AbdomenCT-1K-ImagePart{part}" / f"{name}_0000.nii.gz", root / "Mask" / f"{name}.nii.gz"


def write_abdomenct1k_case(root: str | Path, case_number: int, n_cases: int, phantom: Phantom,
                           sheared: bool = False, with_mask: bool = True) -> None:
    image, mask = abdomenct1k_case_files(Path(root), case_number, n_cases)
    if with_mask:
        _write(phantom.to_sitk(phantom.organ_labels(ABDOMENCT1K_TRUTH)), mask, sheared)
    _write(phantom.to_sitk(phantom.ct), image, sheared)


def _split_of(k: int, n: int) -> str:
    """Deterministic TotalSegmentator-like split: about 10 % test, 10 % val, rest train."""
    if (n >= 3 and k == n - 1) or (n >= 10 and k % 10 == 9):
        return "test"
    if (n >= 3 and k == n - 2) or (n >= 10 and k % 10 == 8):
        return "val"
    return "train"


def _unlabelled(layout: str, index: int, n_cases: int, quirks: bool) -> bool:
    return quirks and layout == "abdomenct1k" and n_cases >= 2 and index == n_cases - 1


def case_is_written(layout: str, root: str | Path, index: int, n_cases: int, first_id: int = 0,
                    quirks: bool = False) -> bool:
    root = Path(root)
    if layout == "ctorg":
        return all(p.is_file() for p in ctorg_case_files(root, first_id + index))
    if layout == "totalseg":
        return (root / f"s{first_id + index:04d}" / "ct.nii.gz").is_file()
    if layout == "abdomenct1k":
        image, mask = abdomenct1k_case_files(root, first_id + index + 1, n_cases)
        return image.is_file() and (mask.is_file() or _unlabelled(layout, index, n_cases, quirks))
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def write_case(layout: str, root: str | Path, index: int, n_cases: int, settings: PhantomSettings,
               first_id: int = 0, version: str = "v2", quirks: bool = False) -> None:
    """Generate case ``index`` of a dataset and write it in ``layout`` (``quirks``: see the module docstring;
    for CT-ORG ``root`` is then already the ``OrganSegmentations`` folder)."""
    phantom = settings.make(first_id + index)
    sheared = quirks and index % 2 == 1
    if layout == "ctorg":
        write_ctorg_case(root, first_id + index, phantom)
    elif layout == "totalseg":
        write_totalseg_case(root, f"s{first_id + index:04d}", phantom, version, sheared)
    elif layout == "abdomenct1k":
        write_abdomenct1k_case(root, first_id + index + 1, n_cases, phantom, sheared,
                               with_mask=not _unlabelled(layout, index, n_cases, quirks))
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def finish_dataset(layout: str, root: str | Path, n_cases: int, settings: PhantomSettings, first_id: int = 0,
                   version: str = "v2") -> None:
    """Dataset-level files (TotalSegmentator's meta.csv)."""
    if layout == "totalseg":
        rows = []
        for k in range(n_cases):
            rng = np.random.default_rng(settings.seed + first_id + k)
            rows.append({"image_id": f"s{first_id + k:04d}", "age": str(int(rng.integers(20, 90))),
                         "gender": "mf"[int(rng.integers(0, 2))], "institute": "A", "study_type": "ct phantom",
                         "split": _split_of(k, n_cases), "manufacturer": "phantom", "scanner_model": "",
                         "kvp": "120", "pathology": "no pathology", "pathology_location": ""})
        write_totalseg_meta(root, rows, version)
