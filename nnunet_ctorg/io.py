"""Image input/output helpers: atomic writes and checked reads with SimpleITK."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name next to ``path`` (same ending) that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the .nii.gz ending
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_image_atomic(image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image to ``path`` through a temporary name, so no half-written file remains."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def copy_file_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def read_image(path: str | os.PathLike, what: str = "image"):
    """Read an image with SimpleITK; a missing or unreadable file raises one clear error."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise ValueError(f"{what} {path} cannot be read ({first})") from None


def same_geometry(a, b, tol: float = 1e-4) -> bool:
    """True when two SimpleITK images (or ImageFileReaders after ReadImageInformation) share size,
    spacing, origin and direction."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 10)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def count_non_finite(path: str | os.PathLike) -> int:
    """Number of NaN/inf voxels stored in an image file.

    SimpleITK's NIfTI reader turns NaN into 0 without a word, so NIfTI files are read raw with
    nibabel here; other formats go through SimpleITK.
    """
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel

        data = np.asanyarray(nibabel.load(str(path)).dataobj)
    else:
        import SimpleITK as sitk

        data = sitk.GetArrayViewFromImage(read_image(path))
    if not np.issubdtype(data.dtype, np.floating):
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def check_finite(image, path: str | os.PathLike, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` if a float image file holds NaN or infinite voxels."""
    import SimpleITK as sitk

    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and (bad := count_non_finite(path)):
        raise ValueError(f"{what}: the CT contains {bad} NaN or infinite values")


def read_ct(path: str | os.PathLike, what: str):
    """Read a CT and check it is a 3-D, single-channel image without NaN; errors start with ``what``."""
    image = read_image(path, f"{what}: image")
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise ValueError(f"{what}: the image must be 3-D, got size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what}: the image has {image.GetNumberOfComponentsPerPixel()} components per voxel")
    check_finite(image, path, what)
    return image


IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")


def case_name(path: str | os.PathLike) -> str:
    """File name without its image ending (``CASE.nii.gz`` -> ``CASE``)."""
    name = Path(path).name
    return next((name[: -len(e)] for e in IMAGE_ENDINGS if name.endswith(e)), name)


def list_images(folder: str | os.PathLike, what: str = "input folder") -> list[Path]:
    """Image files (``IMAGE_ENDINGS``) of ``folder``, sorted; hidden temporary files are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {folder}")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(IMAGE_ENDINGS) and not p.name.startswith("."))


def read_json(path: str | os.PathLike, what: str = "file"):
    """Parsed JSON of ``path``; a missing file or invalid JSON raises one clear error naming ``what``."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e})") from None


def load_label_map(path: str | os.PathLike) -> dict[str, int]:
    """Organ name -> label id from an nnU-Net ``dataset.json`` (``"labels": {name: id}``) or a TotalSegmentator-style
    ``{id: name}`` JSON file. Region labels (lists of ids) are not supported."""
    spec = read_json(path, "label file")
    spec = spec.get("labels", spec) if isinstance(spec, dict) else spec
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"label file {path}: expected {{name: id}} or {{id: name}} mapping")
    if all(str(k).isdigit() for k in spec):
        labels = {str(v): int(k) for k, v in spec.items()}
    else:
        bad = {k: v for k, v in spec.items() if not isinstance(v, int)}
        if bad:
            raise ValueError(f"label file {path}: region-based or non-integer labels are not supported: {bad}")
        labels = {str(k): int(v) for k, v in spec.items()}
    labels.setdefault("background", 0)
    return labels
