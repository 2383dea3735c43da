"""NIfTI CTs read and label images written slab by slab, so that neither is ever whole in memory.

A NIfTI volume is stored x fastest, then y, then z: a run of whole z slices (the slowest axis, array axis 0
of ``sitk.GetArrayFromImage``) is one contiguous run of bytes. :class:`NiftiVolume` streams a ``.nii`` /
``.nii.gz`` CT once (gzip cannot seek backwards cheaply), applies ``scl_slope``/``scl_inter`` as SimpleITK
does, checks the values (NaN, whole HU in int16's range) and keeps them in an uncompressed temporary file
from which each slab is read on demand. :class:`NiftiLabelWriter` writes a label image as slabs arrive, in
slice order, through gzip. Geometry comes from SimpleITK (read) and goes through nibabel's header (write);
both are tested against SimpleITK's own reader and writer.
"""

import gzip
import io
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from nnunet_ctorg.inference.slab_volume import SlabVolume

SLICES_PER_READ = 16


class NiftiVolume(SlabVolume):
    """A 3-D NIfTI CT as a (z, y, x) array that reads only the slices it is indexed with
    (:class:`~nnunet_ctorg.inference.slab_volume.SlabVolume`). Values equal ``sitk.ReadImage``'s, as
    int16 when they are whole numbers in its range (as ``read_ct_compact`` casts), else float32. Call
    :meth:`close` (or use ``with``) to delete the temporary file.
    """

    def __init__(self, path: str | os.PathLike, what: str, temp_dir: str | os.PathLike | None = None) -> None:
        import nibabel
        import SimpleITK as sitk

        path = Path(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise ValueError(f"{what}: {path.name} cannot be read ({str(e).strip().splitlines()[-1]})") from None
        size = reader.GetSize()
        if len(size) != 3 or min(size) < 2 or reader.GetNumberOfComponents() != 1:
            raise ValueError(f"{what}: the image must be 3-D with one component, got size {size}")
        self._geometry = (reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection())
        # nibabel's array proxy for the layout: it has the data offset really used (some writers store
        # vox_offset 0 in a .nii, e.g. the real CT of ../shared)
        try:
            nifti = nibabel.load(str(path))
        except Exception as e:  # nibabel's ImageFileError (e.g. a .nii.gz that is not gzip), EOFError, zlib
            raise ValueError(f"{what}: {path.name} cannot be read as NIfTI ({type(e).__name__}: {e})") from None
        proxy = nifti.dataobj
        shape = tuple(int(n) for n in proxy.shape)
        while len(shape) > 3 and shape[-1] == 1:  # SimpleITK reads x*y*z*1 as 3-D
            shape = shape[:-1]
        if shape != tuple(size) or getattr(proxy, "order", "F") != "F":
            raise ValueError(f"{what}: nibabel and SimpleITK disagree on the layout of {path.name}")
        nx, ny, nz = size
        self.shape = (nz, ny, nx)
        stored = np.dtype(proxy.dtype)
        slope, inter = itk_scaling(path)
        scaled = slope != 1 or inter != 0
        # what SimpleITK returns: the stored type, or float32 after a scaling
        kept = np.dtype(np.float32) if scaled or stored.kind == "f" else np.dtype(stored.newbyteorder("="))
        self.path, self.what, self._kept = path, what, kept
        # an unlinked temporary file (O_TMPFILE on Linux): nothing is left behind, whatever ends the process
        self._raw = tempfile.TemporaryFile(dir=temp_dir)
        try:
            integral = self._unpack(path, int(proxy.offset), stored, slope if scaled else None,
                                    inter if scaled else None)
        except (EOFError, OSError, zlib.error) as e:
            self.close()
            raise ValueError(f"{what}: {path.name} cannot be read ({type(e).__name__}: {e})") from None
        except BaseException:
            self.close()
            raise
        self.dtype = np.dtype(np.int16) if integral else kept

    def _unpack(self, path: Path, offset: int, stored: np.dtype, slope, inter) -> bool:
        """Stream the voxels into the temporary file; whether every value is whole and fits int16."""
        nz, ny, nx = self.shape
        opener = gzip.open if path.name.endswith(".gz") else open
        integral = True
        with opener(path, "rb") as source:
            source.seek(offset)
            for start in range(0, nz, SLICES_PER_READ):
                n = min(SLICES_PER_READ, nz - start)
                data = source.read(n * ny * nx * stored.itemsize)
                if len(data) != n * ny * nx * stored.itemsize:
                    raise ValueError(f"{self.what}: {path.name} is truncated (slices from {start} missing)")
                block = np.frombuffer(data, stored).reshape(n, ny, nx)
                if slope is not None:
                    block = block * float(slope) + float(inter)
                block = block.astype(self._kept, copy=False)
                if block.dtype.kind == "f":
                    bad = int(np.count_nonzero(~np.isfinite(block)))
                    if bad:
                        raise ValueError(f"{self.what}: the CT contains NaN or infinite values (at least {bad} "
                                         f"in slices {start}..{start + n - 1} of the array)")
                if integral:
                    integral = bool(np.all(block == np.round(block))) if block.dtype.kind == "f" else True
                    integral = integral and block.min() >= -32768 and block.max() <= 32767
                self._raw.write(np.ascontiguousarray(block).tobytes())
            while source.read(1 << 20):  # to the end: gzip checks its CRC there
                pass
        self._raw.flush()
        return integral

    def _read_slices(self, z: range, rows: slice, columns: slice) -> np.ndarray:
        _, ny, nx = self.shape
        first, last = min(z[0], z[-1]), max(z[0], z[-1])
        item = self._kept.itemsize
        data = os.pread(self._raw.fileno(), (last - first + 1) * ny * nx * item, first * ny * nx * item)
        block = np.frombuffer(data, self._kept).reshape(last - first + 1, ny, nx)
        block = block[[i - first for i in z]] if z.step != 1 else block
        return block[:, rows, columns].astype(self.dtype, copy=False)

    def close(self) -> None:
        """Release the temporary file."""
        self._raw.close()

    def __enter__(self) -> "NiftiVolume":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def itk_scaling(path: Path) -> tuple[float, float]:
    """(slope, intercept) of a NIfTI file as ITK's reader applies them: a slope of 0 or NaN counts as 1, the
    intercept is added all the same (NaN as 0). nibabel, following the NIfTI standard, drops both when the
    slope is 0 (and clears them in the header it loads), so the raw header is read here."""
    import nibabel

    with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
        header = nibabel.Nifti1Header.from_fileobj(f, check=False)
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope == 0 or not np.isfinite(slope):
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    return slope, inter


def nifti_header(shape_zyx: tuple[int, int, int], dtype, origin, spacing, direction):
    """A NIfTI-1 header with the geometry SimpleITK writes for (origin, spacing, direction) in LPS: the same
    affine (converted to RAS) as qform and sform, both NIFTI_XFORM_SCANNER_ANAT (code 1)."""
    import nibabel

    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    affine[:3, 3] = lps_to_ras @ np.asarray(origin, float)
    header = nibabel.Nifti1Header()
    header.set_data_shape(tuple(int(n) for n in shape_zyx[::-1]))
    header.set_data_dtype(np.dtype(dtype))
    header.set_xyzt_units("mm", "sec")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_zooms(tuple(float(s) for s in spacing))
    return header


class NiftiLabelWriter:
    """Writes a (z, y, x) label image to ``path`` (``.nii.gz`` or ``.nii``) slab by slab, in slice order.

    Used as the ``out`` array of :meth:`ChunkedPredictor.predict_array`: assignments ``out[z0:z1, ys, xs] =
    labels`` must come with increasing, non-overlapping z ranges; the slices in between, and the voxels of a
    slab outside ``ys, xs`` or outside :attr:`keep_box`, are background. :meth:`close` writes the remaining
    slices and renames the temporary file to ``path``; :meth:`abort` removes it.
    """

    in_memory = False

    def __init__(self, path: str | os.PathLike, shape_zyx: tuple[int, int, int], dtype, origin, spacing,
                 direction) -> None:
        self.path = Path(path)
        self.shape, self.dtype, self.ndim = tuple(int(n) for n in shape_zyx), np.dtype(dtype), 3
        self.keep_box: tuple[slice, slice, slice] | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".tmp-{os.getpid()}-{self.path.name}")
        compressed = self.path.name.endswith(".gz")
        self._file = gzip.open(self._tmp, "wb", compresslevel=1) if compressed else open(self._tmp, "wb")
        header = nifti_header(self.shape, self.dtype, origin, spacing, direction)
        header.set_data_offset(352)
        block = io.BytesIO()
        header.write_to(block)  # 348 bytes and, for a single file, the 4-byte extension flag (no extensions)
        self._file.write(block.getvalue().ljust(352, b"\0"))
        self.written = 0  # slices written so far

    def _write_zeros(self, until: int) -> None:
        slice_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        while self.written < until:
            n = min(SLICES_PER_READ, until - self.written)
            self._file.write(bytes(n * slice_bytes))
            self.written += n

    def __setitem__(self, index, values) -> None:
        if not (isinstance(index, tuple) and len(index) == 3 and all(isinstance(i, slice) for i in index)):
            raise TypeError(f"a NiftiLabelWriter takes (z, y, x) slices, got {index!r}")
        z0, z1, _ = index[0].indices(self.shape[0])
        if z0 < self.written:
            raise ValueError(f"slices {z0}..{z1 - 1} come after slice {self.written - 1} was written")
        self._write_zeros(z0)
        slab = np.zeros((z1 - z0, *self.shape[1:]), self.dtype)
        slab[:, index[1], index[2]] = values
        if self.keep_box is not None:
            kept = np.zeros_like(slab)
            zs = slice(max(self.keep_box[0].start or 0, z0) - z0, max(min(self.keep_box[0].stop, z1) - z0, 0))
            kept[zs, self.keep_box[1], self.keep_box[2]] = slab[zs, self.keep_box[1], self.keep_box[2]]
            slab = kept
        self._file.write(slab.tobytes())
        self.written = z1

    def close(self) -> None:
        """Write the remaining background slices and put the file in place (on failure nothing is left)."""
        try:
            self._write_zeros(self.shape[0])
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the half-written file."""
        try:
            self._file.close()  # may fail again, e.g. on a full disk
        except OSError:
            pass
        finally:
            self._tmp.unlink(missing_ok=True)
