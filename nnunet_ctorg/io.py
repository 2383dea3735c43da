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
