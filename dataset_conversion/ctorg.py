"""CT-ORG (``volume-N.nii.gz`` / ``labels-N.nii.gz``) to an nnU-Net raw dataset.

Cases 0-20 are CT-ORG's manually corrected test split and go to imagesTs/labelsTs.
Labels are stored as floats in CT-ORG: they are rounded, and anything that is not one of
the ids 0-6 after rounding is an error naming the case.
"""

import re
from collections.abc import Collection
from pathlib import Path

import numpy as np

from nnunet_ctorg.io import count_non_finite, read_image, same_geometry, write_image_atomic
from nnunet_ctorg.labels import CTORG_LABELS

CTORG_TEST_IDS = range(0, 21)


def find_ctorg_cases(source_dir: str | Path) -> list[int]:
    """Case numbers N with a ``volume-N.nii.gz`` in ``source_dir``."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"CT-ORG folder not found: {source_dir}")
    ids = sorted(int(m.group(1)) for p in source_dir.iterdir()
                 if (m := re.fullmatch(r"volume-(\d+)\.nii(\.gz)?", p.name)))
    if not ids:
        raise ValueError(f"no volume-N.nii.gz files in {source_dir}: not a CT-ORG folder")
    return ids


def convert_ctorg_case(volume_path: str | Path, labels_path: str | Path, image_out: str | Path,
                       label_out: str | Path) -> None:
    """Check and convert one CT-ORG case; raises ``ValueError`` naming the case on bad input."""
    import SimpleITK as sitk

    case = "CT-ORG case " + Path(volume_path).name.removeprefix("volume-").split(".")[0]
    image = read_image(volume_path, "CT-ORG volume")
    label = read_image(labels_path, "CT-ORG labels")
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise ValueError(f"{case}: expected a 3-D CT, got size {image.GetSize()}")
    if not same_geometry(image, label):
        raise ValueError(f"{case}: image and labels differ in geometry (size {image.GetSize()} vs "
                         f"{label.GetSize()}, spacing {image.GetSpacing()} vs {label.GetSpacing()})")
    hu = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and (bad := count_non_finite(volume_path)):
        raise ValueError(f"{case}: the CT contains {bad} NaN or infinite values")
    values = sitk.GetArrayFromImage(label)
    rounded = np.rint(values)
    if np.abs(values - rounded).max(initial=0) > 1e-3:
        raise ValueError(f"{case}: labels are not whole numbers (e.g. {values[np.abs(values - rounded) > 1e-3][0]})")
    unexpected = sorted(set(np.unique(rounded).tolist()) - set(CTORG_LABELS.values()))
    if unexpected:
        raise ValueError(f"{case}: unexpected label values {unexpected}; CT-ORG uses 0-6")

    integral = np.array_equal(hu, np.rint(hu)) and hu.min() >= -32768 and hu.max() <= 32767
    out_image = sitk.Cast(image, sitk.sitkInt16 if integral else sitk.sitkFloat32)
    out_label = sitk.GetImageFromArray(rounded.astype(np.uint8))
    out_label.CopyInformation(image)
    write_image_atomic(out_label, label_out)
    write_image_atomic(out_image, image_out)


def convert_ctorg_dataset(source_dir: str | Path, raw_dir: str | Path, dataset_id: int, name: str = "CTORG",
                          test_ids: Collection[int] = CTORG_TEST_IDS) -> Path:
    """Convert a CT-ORG folder into ``raw_dir/DatasetXXX_name``; returns that folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be in 1..999, got {dataset_id}")
    source_dir = Path(source_dir)
    out = Path(raw_dir) / f"Dataset{dataset_id:03d}_{name}"
    n_train = 0
    for n in find_ctorg_cases(source_dir):
        split = "Ts" if n in test_ids else "Tr"
        n_train += split == "Tr"
        case = f"ctorg_{n:03d}"
        convert_ctorg_case(source_dir / f"volume-{n}.nii.gz", source_dir / f"labels-{n}.nii.gz",
                           out / f"images{split}" / f"{case}_0000.nii.gz", out / f"labels{split}" / f"{case}.nii.gz")
    generate_dataset_json(str(out), channel_names={0: "CT"}, labels=CTORG_LABELS, num_training_cases=n_train,
                          file_ending=".nii.gz", dataset_name=out.name,
                          description="CT-ORG (Rister et al. 2020) converted by nnunet-ctorg",
                          reference="https://doi.org/10.1038/s41597-020-00715-8", license="CC BY 3.0")
    return out
