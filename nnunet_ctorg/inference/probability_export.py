"""nnU-Net's ``--save_probabilities`` output, written slab by slab so that it is never whole in memory.

``nnUNetv2_predict --save_probabilities`` writes, beside ``CASE<file_ending>``, ``CASE.npz`` (one array,
``probabilities``: float32, shape (classes, *the image's array shape), the softmax of the resampled logits,
background 1 outside nnU-Net's crop to non-zero voxels; ``numpy.savez_compressed``) and ``CASE.pkl`` (the
case's properties: SimpleITK geometry, spacing, and the crop/resampling shapes of the preprocessing)
(nnunetv2/inference/export_prediction.py). :class:`ProbabilityWriter` writes the same two files: each slab
goes to an unlinked, uncompressed temporary file (classes x voxels x 4 bytes of disk, not of RAM), stored
slab axis first so that a slab is one write per class; :meth:`ProbabilityWriter.close` deflates it, in the
array's C order, into the ``.npz`` as ``numpy.savez_compressed`` does (a zip64 archive with one deflated
``probabilities.npy``), then both files are renamed into place.
"""

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np

READ_BYTES = 16 * 2**20


def nnunet_properties(image, preprocessing: dict) -> dict:
    """The properties nnU-Net pickles beside a case's probabilities: what ``SimpleITKIO.read_images`` returns
    for a 3-D image plus the keys ``DefaultPreprocessor.run_case_npy`` adds (``preprocessing``)."""
    return {"sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                           "direction": image.GetDirection()},
            "spacing": list(np.abs(list(image.GetSpacing())[::-1])), **preprocessing}


class ProbabilityWriter:
    """Writes ``CASE.npz`` and ``CASE.pkl`` as ``nnUNetv2_predict --save_probabilities`` does.

    Used by :meth:`ChunkedPredictor.predict_array`: ``writer[index] = probabilities`` with ``index`` three
    slices of the image's array and ``probabilities`` (classes, ...) for them; the slabs run along
    :attr:`axis` (set by the predictor) and may come in any order. Voxels of a slab outside ``index`` or
    outside :attr:`keep_box`, and slabs never written, are background (probability 1 for class 0).

    Args:
        truncated: the output path without ending (``OUT/CASE``).
        n_classes: classes (segmentation heads) of the model.
        shape: the image's array shape (z, y, x).
        temp_dir: where the temporary file goes (default: the output folder).
    """

    in_memory = False

    def __init__(self, truncated: str | os.PathLike, n_classes: int, shape: tuple[int, int, int],
                 temp_dir: str | os.PathLike | None = None) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        truncated = Path(truncated)
        self.npz, self.pkl = truncated.with_name(truncated.name + ".npz"), truncated.with_name(truncated.name + ".pkl")
        self.n_classes, self.shape = int(n_classes), tuple(int(n) for n in shape)
        self.axis = 0
        self.keep_box: tuple[slice, slice, slice] | None = None
        self.npz.parent.mkdir(parents=True, exist_ok=True)
        self._raw = tempfile.TemporaryFile(dir=temp_dir or self.npz.parent)
        self._voxels = int(np.prod(self.shape))
        os.ftruncate(self._raw.fileno(), 4 * self.n_classes * self._voxels)  # sparse zeros
        self._written: np.ndarray | None = None

    def __setitem__(self, index, values) -> None:
        if not (isinstance(index, tuple) and len(index) == 3 and all(isinstance(i, slice) for i in index)):
            raise TypeError(f"a ProbabilityWriter takes (z, y, x) slices, got {index!r}")
        values = np.asarray(values)
        if values.shape[0] != self.n_classes:
            raise ValueError(f"expected {self.n_classes} classes, got probabilities of shape {values.shape}")
        if self._written is None:
            self._written = np.zeros(self.shape[self.axis], bool)
        a0, a1, _ = index[self.axis].indices(self.shape[self.axis])
        slab_shape = list(self.shape)
        slab_shape[self.axis] = a1 - a0
        slab = self._background(slab_shape)
        inner = list(index)
        inner[self.axis] = slice(0, a1 - a0)
        slab[(slice(None), *inner)] = values
        if self.keep_box is not None:
            kept = self._background(slab_shape)
            box = list(self.keep_box)
            b0, b1, _ = box[self.axis].indices(self.shape[self.axis])
            box[self.axis] = slice(max(b0, a0) - a0, max(min(b1, a1) - a0, 0))
            kept[(slice(None), *box)] = slab[(slice(None), *box)]
            slab = kept
        self._write(slab, a0)
        self._written[a0:a1] = True

    def _background(self, shape) -> np.ndarray:
        """(classes, *shape) probabilities of background: 1 for class 0, 0 for the others."""
        slab = np.zeros((self.n_classes, *shape), np.float32)
        slab[0] = 1.0
        return slab

    @property
    def _slab_voxels(self) -> int:
        """Voxels of one slice along :attr:`axis`."""
        return self._voxels // self.shape[self.axis]

    def _write(self, slab: np.ndarray, a0: int) -> None:
        """Put (classes, slab) at slab position ``a0``: the file is (classes, axis, the other axes in order)."""
        fd = self._raw.fileno()
        stored = np.moveaxis(slab, 1 + self.axis, 1)
        for c in range(self.n_classes):
            data = np.ascontiguousarray(stored[c], dtype="<f4").tobytes()
            offset = 4 * (c * self._voxels + a0 * self._slab_voxels)
            if os.pwrite(fd, data, offset) != len(data):
                raise OSError(f"{self.npz.name}: short write to the temporary file (disk full?)")

    def _c_order_blocks(self, c: int):
        """Class ``c`` of the probabilities in the array's C order, as blocks of whole z slices (bytes)."""
        fd = self._raw.fileno()
        start = c * self._voxels
        if self.axis == 0:  # stored in C order already
            for offset in range(0, self._voxels, READ_BYTES // 4):
                yield os.pread(fd, 4 * min(READ_BYTES // 4, self._voxels - offset), 4 * (start + offset))
            return
        nz, ny, nx = self.shape
        across = nx if self.axis == 1 else ny  # the other axis besides z
        per_block = max(READ_BYTES // (4 * ny * nx), 1)
        for z0 in range(0, nz, per_block):
            z1 = min(z0 + per_block, nz)
            block = np.empty((z1 - z0, ny, nx), np.float32)
            for a in range(self.shape[self.axis]):  # slice a of the slab axis holds z x across, z contiguous
                data = os.pread(fd, 4 * (z1 - z0) * across, 4 * (start + a * self._slab_voxels + z0 * across))
                values = np.frombuffer(data, "<f4").reshape(z1 - z0, across)
                if self.axis == 1:
                    block[:, a, :] = values
                else:
                    block[:, :, a] = values
            yield block.tobytes()

    def close(self, properties: dict, progress: bool = False) -> None:
        """Fill the slabs never written with background, write ``CASE.npz`` and ``CASE.pkl`` (temporary names,
        then renamed) and release the temporary file. ``properties``: :func:`nnunet_properties`."""
        from tqdm import tqdm

        tmp_npz = self.npz.with_name(f".tmp-{os.getpid()}-{self.npz.name}")
        tmp_pkl = self.pkl.with_name(f".tmp-{os.getpid()}-{self.pkl.name}")
        try:
            written = self._written if self._written is not None else np.zeros(self.shape[self.axis], bool)
            for a in np.flatnonzero(~written):
                slab_shape = list(self.shape)
                slab_shape[self.axis] = 1
                self._write(self._background(slab_shape), int(a))
            total = 4 * self.n_classes * self._voxels
            with zipfile.ZipFile(tmp_npz, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
                    archive.open("probabilities.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                              "fortran_order": False,
                                                              "shape": (self.n_classes, *self.shape)})
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"{self.npz.name}", leave=False,
                          disable=not progress) as bar:
                    for c in range(self.n_classes):
                        for block in self._c_order_blocks(c):
                            member.write(block)
                            bar.update(len(block))
            with open(tmp_pkl, "wb") as f:
                pickle.dump(properties, f)
            os.replace(tmp_npz, self.npz)
            os.replace(tmp_pkl, self.pkl)
        except BaseException:
            tmp_npz.unlink(missing_ok=True)
            tmp_pkl.unlink(missing_ok=True)
            raise
        finally:
            self._raw.close()

    def abort(self) -> None:
        """Drop the temporary file; nothing is written."""
        self._raw.close()

