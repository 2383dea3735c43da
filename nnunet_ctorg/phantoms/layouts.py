"""Write phantoms in the exact on-disk layouts of CT-ORG, TotalSegmentator and AbdomenCT-1K.

- CT-ORG: ``volume-N.nii.gz`` and ``labels-N.nii.gz`` side by side, both float32; labels
  1 liver, 2 bladder, 3 lungs, 4 kidneys, 5 bone, 6 brain (brain only where in view).
- TotalSegmentator: ``meta.csv`` (``;``-separated, with ``image_id`` and ``split``) and per
  case ``<image_id>/ct.nii.gz`` plus ``<image_id>/segmentations/<structure>.nii.gz``, one
  binary mask per structure of the version (v2: 117; v1: without the v2-only ones).
- AbdomenCT-1K: images ``Case_XXXXX_0000.nii.gz`` spread over ``AbdomenCT-1K-ImagePart1..3``
  and masks ``Case_XXXXX.nii.gz`` in ``Mask``; labels 1 liver, 2 kidney, 3 spleen, 4 pancreas.

Every file is written atomically; a case whose files all exist is skipped (resumable).
"""

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_ctorg.io import write_image_atomic, write_text_atomic
from nnunet_ctorg.label_scheme import DEFAULT_SCHEME, LabelScheme
from nnunet_ctorg.labels import ABDOMENCT1K_LABELS, CTORG_LABELS, TOTALSEG_V2_STRUCTURES, totalseg_structures
from nnunet_ctorg.phantoms.anatomy import Phantom, generate_phantom

LAYOUTS = ("ctorg", "totalseg", "abdomenct1k")

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


def write_totalseg_case(root: str | Path, image_id: str, phantom: Phantom, version: str = "v2") -> None:
    """One case folder: ct.nii.gz and a mask file for every structure of the version."""
    case = Path(root) / image_id
    structures = phantom.structures
    if version == "v1":  # S1 belongs to the sacrum in v1
        structures = structures.copy()
        structures[phantom.mask("vertebrae_S1").astype(bool)] = \
            TOTALSEG_V2_STRUCTURES.index("sacrum") + 1
    for name in totalseg_structures(version):
        mask = (structures == TOTALSEG_V2_STRUCTURES.index(name) + 1).astype(np.uint8)
        write_image_atomic(phantom.to_sitk(mask), case / "segmentations" / f"{name}.nii.gz")
    write_image_atomic(phantom.to_sitk(phantom.ct), case / "ct.nii.gz")  # last: marks the case complete


def write_totalseg_meta(root: str | Path, rows: Sequence[dict[str, str]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["image_id", "age", "gender", "institute", "study_type", "split"],
                            delimiter=";", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out.getvalue(), Path(root) / "meta.csv")


def abdomenct1k_case_files(root: Path, case_number: int, n_cases: int) -> tuple[Path, Path]:
    part = 1 + (3 * (case_number - 1)) // max(n_cases, 1)
    name = f"Case_{case_number:05d}"
    return root / f"AbdomenCT-1K-ImagePart{part}" / f"{name}_0000.nii.gz", root / "Mask" / f"{name}.nii.gz"


def write_abdomenct1k_case(root: str | Path, case_number: int, n_cases: int, phantom: Phantom) -> None:
    image, mask = abdomenct1k_case_files(Path(root), case_number, n_cases)
    seg = phantom.organ_labels(ABDOMENCT1K_TRUTH)
    write_image_atomic(phantom.to_sitk(seg), mask)
    write_image_atomic(phantom.to_sitk(phantom.ct), image)


def _split_of(k: int, n: int) -> str:
    """Deterministic TotalSegmentator-like split: about 10 % test, 10 % val, rest train."""
    if (n >= 3 and k == n - 1) or (n >= 10 and k % 10 == 9):
        return "test"
    if (n >= 3 and k == n - 2) or (n >= 10 and k % 10 == 8):
        return "val"
    return "train"


def case_is_written(layout: str, root: str | Path, index: int, n_cases: int, first_id: int = 0) -> bool:
    root = Path(root)
    if layout == "ctorg":
        return all(p.is_file() for p in ctorg_case_files(root, first_id + index))
    if layout == "totalseg":
        return (root / f"s{first_id + index:04d}" / "ct.nii.gz").is_file()
    if layout == "abdomenct1k":
        return all(p.is_file() for p in abdomenct1k_case_files(root, first_id + index + 1, n_cases))
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def write_case(layout: str, root: str | Path, index: int, n_cases: int, settings: PhantomSettings,
               first_id: int = 0, version: str = "v2") -> None:
    """Generate case ``index`` of a dataset and write it in ``layout``."""
    phantom = settings.make(first_id + index)
    if layout == "ctorg":
        write_ctorg_case(root, first_id + index, phantom)
    elif layout == "totalseg":
        write_totalseg_case(root, f"s{first_id + index:04d}", phantom, version)
    elif layout == "abdomenct1k":
        write_abdomenct1k_case(root, first_id + index + 1, n_cases, phantom)
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def finish_dataset(layout: str, root: str | Path, n_cases: int, settings: PhantomSettings, first_id: int = 0) -> None:
    """Dataset-level files (TotalSegmentator's meta.csv)."""
    if layout == "totalseg":
        rows = []
        for k in range(n_cases):
            rng = np.random.default_rng(settings.seed + first_id + k)
            rows.append({"image_id": f"s{first_id + k:04d}", "age": str(int(rng.integers(20, 90))),
                         "gender": "mf"[int(rng.integers(0, 2))], "institute": "A", "study_type": "ct phantom",
                         "split": _split_of(k, n_cases)})
        write_totalseg_meta(root, rows)
