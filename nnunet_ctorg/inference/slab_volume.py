"""The interface the chunked predictor reads a CT through when the CT is not in memory."""

import numpy as np


class SlabVolume:
    """A (z, y, x) CT that reads only the slices it is indexed with.

    Subclasses set ``shape``, ``dtype`` and ``_geometry`` (origin, spacing, direction as SimpleITK gives them)
    and implement :meth:`_read_slices`. Enough of SimpleITK's image interface (``GetSize``, ``GetOrigin``,
    ``GetSpacing``, ``GetDirection``) for the chunked predictor.
    """

    in_memory = False
    ndim = 3
    shape: tuple[int, int, int]
    dtype: np.dtype
    _geometry: tuple

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def GetSize(self) -> tuple[int, int, int]:  # noqa: N802 - SimpleITK's names
        return self.shape[::-1]

    def GetOrigin(self) -> tuple[float, ...]:  # noqa: N802
        return self._geometry[0]

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self._geometry[1]

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self._geometry[2]

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        index = tuple(index) + (slice(None),) * (3 - len(index))
        if not all(isinstance(i, slice) for i in index):
            raise TypeError(f"a {type(self).__name__} is indexed with slices only, got {index!r}")
        z = range(*index[0].indices(self.shape[0]))
        if len(z) == 0:
            return np.zeros((0, *(len(range(*i.indices(n))) for i, n in zip(index[1:], self.shape[1:]))), self.dtype)
        return self._read_slices(z, index[1], index[2])

    def _read_slices(self, z: range, rows: slice, columns: slice) -> np.ndarray:
        """The slices ``z`` (not empty), cropped to ``rows`` and ``columns``, as ``self.dtype``."""
        raise NotImplementedError
