"""Image input/output helpers: atomic writes and checked reads with SimpleITK."""

import math
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


def _last_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else "unknown error"


# Bytes per voxel of each NIfTI datatype code (nifti1.h; 1 = binary, of bitpix 1, is left out)
NIFTI_ITEMSIZE = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                  1536: 16, 1792: 16, 2048: 32, 2304: 4}
_INFLATE_CHUNK = 1 << 20  # compressed bytes read at a time, and the most inflated bytes held at a time


def _inflated_chunks(f, limit: int | None = None, chunk: int = _INFLATE_CHUNK) -> Iterator[bytes]:
    """The inflated bytes of the gzip file ``f``, member after member (as bgzip and pigz write), at most ``chunk``
    at a time (and ``chunk`` compressed bytes read at a time); stops after ``limit`` bytes when given. A stream
    that ends inside a member raises ``EOFError``; damaged data or a bad CRC, ``zlib.error``. After a complete
    member, zero padding is skipped and bytes that do not start a member end the stream, as for gzip(1) and
    SimpleITK."""
    import zlib

    inflater, member, fed, total, pending = zlib.decompressobj(31), 0, False, 0, b""
    while True:
        if not pending:
            pending = f.read(chunk)
        if not pending:  # end of file
            if not fed or inflater.eof:
                return
            if out := inflater.flush():  # what the last input still holds
                yield out
            if not inflater.eof:
                raise EOFError("the gzip stream ends inside a member")
            return
        if inflater.eof:  # the next member, if any
            pending = pending.lstrip(b"\0")
            if not pending:
                continue
            inflater, member, fed = zlib.decompressobj(31), member + 1, False
        try:
            out = inflater.decompress(pending, chunk if limit is None else min(chunk, limit - total))
        except zlib.error:
            if member and not fed:
                return  # not a gzip member: trailing bytes
            raise
        fed = True
        pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        if out:
            total += len(out)
            yield out
            if limit is not None and total >= limit:
                return


def _nifti_data_end(header: bytes) -> int | None:
    """Where the voxels of a single-file NIfTI-1 or NIfTI-2 end: the data offset (``vox_offset``, at least the
    header and its 4 extension bytes, as nibabel and ITK read it; extensions lie below it) plus the voxel
    bytes. ``None`` when ``header`` is not such a header (a header/image pair, an unknown datatype)."""
    for order in "<>":
        sizeof_hdr = int(np.frombuffer(header[:4], f"{order}i4")[0]) if len(header) >= 4 else 0
        if sizeof_hdr == 348 and len(header) >= 348 and header[344:347] == b"n+1":
            dim = [int(v) for v in np.frombuffer(header, f"{order}i2", 8, 40)]
            datatype = int(np.frombuffer(header, f"{order}i2", 1, 70)[0])
            vox_offset, least = float(np.frombuffer(header, f"{order}f4", 1, 108)[0]), 352
            break
        if sizeof_hdr == 540 and len(header) >= 540 and header[4:7] == b"n+2":
            dim = [int(v) for v in np.frombuffer(header, f"{order}i8", 8, 16)]
            datatype = int(np.frombuffer(header, f"{order}i2", 1, 12)[0])
            vox_offset, least = float(np.frombuffer(header, f"{order}i8", 1, 168)[0]), 544
            break
    else:
        return None
    if (not 1 <= dim[0] <= 7 or min(dim[1:dim[0] + 1]) < 1 or datatype not in NIFTI_ITEMSIZE
            or not np.isfinite(vox_offset)):
        return None
    return max(least, int(vox_offset)) + math.prod(dim[1:dim[0] + 1]) * NIFTI_ITEMSIZE[datatype]


def check_nifti_complete(path: str | os.PathLike, what: str = "image") -> int | None:
    """Raise ``ValueError`` naming ``what`` and ``path`` when a NIfTI file (``.nii``, or any gzip-compressed file
    holding a NIfTI header) has fewer bytes than its header describes: SimpleITK 2.5 reads a truncated file
    (a partial download) without a word, the missing voxels 0. Returns the bytes the header describes, or
    ``None`` for a file that is not a single-file NIfTI (other formats, a header this cannot parse): left to the
    reader.

    An uncompressed file: its size. A gzip file: its trailer's ISIZE (the last member's size mod 2**32); only when
    that differs (several members, a damaged file) is the whole stream inflated, counted and dropped. Damage
    that keeps the size (a flipped bit) is not looked for here."""
    import zlib

    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        if not gzipped and not path.name.endswith(".nii"):
            return None
        f.seek(0)
        header = b""
        try:
            if gzipped:
                for piece in _inflated_chunks(f, limit=544, chunk=4096):
                    header += piece
            else:
                header = f.read(544)
        except (EOFError, zlib.error):
            pass  # not gzip, or a stream that ends inside the header: left to the reader
        expected = _nifti_data_end(header)
        if expected is None:
            return None
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if not gzipped:
            if size < expected:
                raise ValueError(f"{what} {path} is truncated or corrupt ({size} bytes, its NIfTI header describes "
                                 f"{expected})")
            return expected
        if size >= 18:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:
                return expected
        f.seek(0)  # several members, or damage: count the inflated bytes
        inflated, problem = 0, None
        try:
            for piece in _inflated_chunks(f):
                inflated += len(piece)
        except EOFError:
            problem = "the gzip stream ends early"
        except zlib.error as e:
            problem = f"damaged gzip data: {_last_line(e)}"
    if problem is not None or inflated < expected:
        raise ValueError(f"{what} {path} is truncated or corrupt ({problem or 'the gzip stream is short'}: "
                         f"{inflated} bytes inflated, its NIfTI header describes {expected})")
    return expected


def read_image(path: str | os.PathLike, what: str = "image"):
    """Read an image with SimpleITK; a missing, unreadable or truncated (NIfTI: ``check_nifti_complete``) file
    raises one clear error."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    check_nifti_complete(path, what)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ValueError(f"{what} {path} cannot be read ({_last_line(e)})") from None


# Largest deviation from an orthonormal direction (radians) that the nibabel fallback accepts. SimpleITK 2.5
# refuses a qform-less sform from about 1e-3 rad of shear on; far beyond that the header is broken.
MAX_DIRECTION_CORRECTION_RAD = 1e-2


def orthonormal_direction(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """The orthonormal matrix nearest to ``matrix`` (polar decomposition) and the largest angle, in
    radians, between a column of ``matrix`` and the same column of the result."""
    u, _, vt = np.linalg.svd(matrix)
    nearest = u @ vt
    cosines = np.sum(matrix * nearest, axis=0) / np.linalg.norm(matrix, axis=0)
    return nearest, float(np.max(np.arccos(np.clip(cosines, -1.0, 1.0))))


def _nifti_affine_and_voxels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's affine and voxels (scaled as ``np.asanyarray(nibabel.load(path).dataobj)``) of a NIfTI file.

    A ``.nii.gz`` is inflated in one call sized by its gzip trailer (CRC checked by zlib, without holding the GIL)
    and unscaled voxels are used where they lie in the inflated bytes: about twice as fast as nibabel's stream of
    small gzip reads into a second buffer. A stream that ends early, damaged data or fewer bytes than the header
    describes raise ``zlib.error`` or ``EOFError``."""
    import gzip
    import zlib

    import nibabel

    if not str(path).endswith(".gz"):
        nii = nibabel.load(str(path))
        return nii.affine, np.asanyarray(nii.dataobj)
    with open(path, "rb") as f:
        packed = f.read()
    raw = zlib.decompress(packed, 31, bufsize=max(1, int.from_bytes(packed[-4:], "little")))  # first gzip member
    # sizeof_hdr, in either byte order: 540 for NIfTI-2, else NIfTI-1 (whose reader refuses what is neither)
    nifti2 = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
    klass = nibabel.Nifti2Image if nifti2 else nibabel.Nifti1Image
    nii = klass.from_bytes(raw)
    proxy = nii.dataobj
    count = int(np.prod(proxy.shape, dtype=np.int64))
    if len(raw) < proxy.offset + count * proxy.dtype.itemsize:  # more gzip members (as bgzip writes)
        raw = gzip.decompress(packed)
        nii = klass.from_bytes(raw)
        proxy = nii.dataobj
        if len(raw) < proxy.offset + count * proxy.dtype.itemsize:
            raise EOFError(f"the gzip stream holds {len(raw)} bytes, its NIfTI header describes "
                           f"{proxy.offset + count * proxy.dtype.itemsize}")
    if proxy.slope != 1 or proxy.inter != 0:
        return nii.affine, np.asanyarray(proxy)  # nibabel's scaling and its output type
    return nii.affine, np.frombuffer(raw, proxy.dtype, count, proxy.offset).reshape(proxy.shape, order=proxy.order)


def read_nifti_with_nibabel(path: str | os.PathLike, what: str = "image"):
    """Read a NIfTI file that SimpleITK refuses (a qform-less sform with a slight shear, as in about 140
    TotalSegmentator cases, TotalSegmentator issues #33 and #461, and about 30 AbdomenCT-1K cases,
    AbdomenCT-1K issue #6) with nibabel, as TotalSegmentator's own dataset converter does.

    The voxel grid is kept; the direction becomes the nearest orthonormal one. Returns the SimpleITK
    image and a record ``{"reader": "nibabel", "shear_rad": s, "direction_correction_rad": a}`` (``s``: the
    largest departure of two voxel axes from 90 degrees; ``a``: the largest rotation of one axis by the
    correction, about ``s / 2``); a correction above
    ``MAX_DIRECTION_CORRECTION_RAD`` is refused.
    """
    import zlib

    import SimpleITK as sitk

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    expected = check_nifti_complete(path, what)  # a truncated file: before any inflating
    try:
        # scl_slope / scl_inter applied like SimpleITK; the affine is nibabel's choice: sform if its code is set,
        # else qform
        affine, data = _nifti_affine_and_voxels(path)
    except Exception as e:  # nibabel raises many types for broken files
        damaged = expected is not None and isinstance(e, (zlib.error, EOFError))  # a NIfTI header, then bad data
        problem = "is truncated or corrupt" if damaged else "cannot be read by SimpleITK nor nibabel"
        raise ValueError(f"{what} {path} {problem} ({_last_line(e)})") from None
    if data.ndim != 3:
        raise ValueError(f"{what}: the image must be 3-D, got shape {data.shape}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"{what} {path}: the header has a zero voxel size ({spacing})")
    unit = affine[:3, :3] / spacing
    direction, angle = orthonormal_direction(unit)
    shear = float(np.max(np.abs(np.arcsin(np.clip((unit.T @ unit)[np.triu_indices(3, 1)], -1.0, 1.0)))))
    if angle > MAX_DIRECTION_CORRECTION_RAD:
        raise ValueError(f"{what} {path}: the voxel axes are sheared by {shear:.3g} rad; making them orthonormal "
                         f"would turn an axis by {angle:.3g} rad, beyond the {MAX_DIRECTION_CORRECTION_RAD} rad "
                         f"that is corrected without a word")
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    elif data.dtype == np.bool_:
        data = data.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in ras_to_lps @ affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (ras_to_lps @ direction).ravel()))
    return image, {"reader": "nibabel", "shear_rad": shear, "direction_correction_rad": angle}


def read_image_tolerant(path: str | os.PathLike, what: str = "image"):
    """``read_image``, with the nibabel fallback of ``read_nifti_with_nibabel`` for NIfTI headers that
    SimpleITK refuses. Returns the image and ``None`` or the fallback's record."""
    try:
        return read_image(path, what), None
    except ValueError as e:
        if not str(path).endswith((".nii", ".nii.gz")) or "orthonormal" not in str(e):
            raise
    return read_nifti_with_nibabel(path, what)


def geometry_text(image) -> str:
    """Size, spacing, origin and direction of an image, for error messages."""
    def rounded(values, digits: int) -> tuple[float, ...]:
        return tuple(round(float(v), digits) + 0.0 for v in values)  # + 0.0: no -0.0

    return (f"size {image.GetSize()}, spacing {rounded(image.GetSpacing(), 4)}, origin "
            f"{rounded(image.GetOrigin(), 3)}, direction {rounded(image.GetDirection(), 4)}")


def conform_geometry(moving, reference, what: str, max_shift_voxels: float = 0.5, max_angle_rad: float = 1e-3):
    """``moving`` (a mask) with the geometry of ``reference`` (its image) when they differ by at most
    ``max_shift_voxels`` of origin (per axis, in voxels of the reference) and ``max_angle_rad`` of direction,
    as nnU-Net's integrity check tolerates origin and direction but not spacing. Returns the image and the
    correction (``None`` if none was needed); beyond the tolerance, or with another size or spacing, a
    ``ValueError`` names ``what`` and both geometries.
    """
    size_ok = moving.GetSize() == reference.GetSize()
    spacing_ok = size_ok and np.allclose(moving.GetSpacing(), reference.GetSpacing(), rtol=1e-4, atol=1e-6)
    if spacing_ok:
        ref_dir = np.array(reference.GetDirection()).reshape(3, 3)
        mov_dir = np.array(moving.GetDirection()).reshape(3, 3)
        shift = np.abs(ref_dir.T @ (np.array(moving.GetOrigin()) - np.array(reference.GetOrigin()))
                       ) / np.array(reference.GetSpacing())
        cosines = np.clip(np.sum(ref_dir * mov_dir, axis=0), -1.0, 1.0)
        angle = float(np.max(np.arccos(cosines)))
        if float(shift.max()) <= 1e-3 and angle <= 1e-6:
            return moving, None
        if float(shift.max()) <= max_shift_voxels and angle <= max_angle_rad:
            moving.CopyInformation(reference)
            return moving, {"origin_shift_voxels": round(float(shift.max()), 4),
                               "direction_rad": round(angle, 6)}
        reason = f"by more than {max_shift_voxels} voxel of origin or {max_angle_rad} rad of direction"
    else:
        reason = "in size" if not size_ok else "in spacing"
    raise ValueError(f"{what} differs in geometry from its image {reason}: {geometry_text(moving)} vs image "
                     f"{geometry_text(reference)}")


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

        image = read_image(path)  # a view of a temporary image would read freed memory
        data = sitk.GetArrayViewFromImage(image)
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
    return _checked_ct(read_image(path, f"{what}: image"), path, what)


def read_ct_tolerant(path: str | os.PathLike, what: str):
    """``read_ct`` with ``read_image_tolerant``'s fallback; returns the image and the fallback record or None."""
    image, fallback = read_image_tolerant(path, f"{what}: image")
    return _checked_ct(image, path, what), fallback


def _checked_ct(image, path: str | os.PathLike, what: str):
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


def label_ids_of_images(paths: list[Path], what: str) -> set[int]:
    """The label values found in ``paths`` (each read whole, one at a time); non-integer or negative ones are
    errors naming the file."""
    import SimpleITK as sitk

    ids: set[int] = set()
    for path in paths:
        image = read_image(path, f"{what} {Path(path).name}")  # kept alive while its view is read
        values = np.unique(sitk.GetArrayViewFromImage(image))
        if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
            raise ValueError(f"{what} {Path(path).name}: label values must be integers")
        if values.size and values.min() < 0:
            raise ValueError(f"{what} {Path(path).name}: negative label value {values.min()}")
        ids.update(int(v) for v in values)
    return ids


def label_map_from_ids(ids: set[int], what: str) -> tuple[dict[str, int], str]:
    """A label map for label files without a ``dataset.json``, and the one line saying how it was made.

    The default scheme's names (``nnunet_ctorg.labels.DEFAULT_LABELS``) when every id found is one of its ids, else
    ``label_<id>``. Only the ids found are in the map.
    """
    from nnunet_ctorg.labels import DEFAULT_LABELS

    organs = sorted(ids - {0})
    names = {i: n for n, i in DEFAULT_LABELS.items()}
    if all(i in names for i in organs):
        labels = {"background": 0, **{names[i]: i for i in organs}}
        how = "taken as the default scheme's " + (", ".join(f"{i} {names[i]}" for i in organs) or "(none)")
    else:
        labels = {"background": 0, **{f"label_{i}": i for i in organs}}
        shown = ", ".join(map(str, organs[:12])) + (f", ... ({len(organs)} ids)" if len(organs) > 12 else "")
        how = f"named label_<id> (ids {shown} do not all fit the default scheme's 1-{max(names)})"
    return labels, f"no label map (-djfile) or dataset.json: the label ids of {what} {how}"


def resolve_label_map(djfile: str | os.PathLike | None, candidates: list[Path], label_files: list[Path],
                      what: str) -> dict[str, int]:
    """Organ name -> id from ``djfile``, else from the first existing ``dataset.json`` of ``candidates``, else from
    the ids in ``label_files`` (:func:`label_map_from_ids`, said in one printed line)."""
    if djfile is not None:
        return load_label_map(djfile)
    for candidate in candidates:
        if Path(candidate).is_file():
            return load_label_map(candidate)
    if not label_files:
        raise ValueError(f"no label map (-djfile), no dataset.json and no {what} to take the label ids from")
    labels, line = label_map_from_ids(label_ids_of_images(label_files, what), what)
    print(line)
    return labels
