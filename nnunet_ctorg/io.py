"""Image input/output helpers: atomic writes and checked reads with SimpleITK."""

import os
from pathlib import Path

import numpy as np


def write_image_atomic(image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image to ``path`` through a temporary name, so no half-written file remains."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the .nii.gz ending
    try:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    """True when two SimpleITK images share size, spacing, origin and direction."""
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
