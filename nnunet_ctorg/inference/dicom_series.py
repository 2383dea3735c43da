"""CT DICOM series as prediction inputs: found in a folder, checked, ordered and read with SimpleITK (GDCM).

A folder may hold one series per sub-folder or several series mixed in one folder; files are grouped by
SeriesInstanceUID (0020,000E). Slices are ordered by ImagePositionPatient (0020,0032) projected on the slice
normal (the cross product of ImageOrientationPatient's row and column cosines), not by file name or
InstanceNumber. GDCM applies RescaleSlope/RescaleIntercept when it reads the pixels. A case is named after
its sub-folder when that folder holds this one series only, else ``PatientID_SeriesNumber``.

Checked per series, each problem one line naming the series: a modality other than CT (refused), localizer
images (ImageType LOCALIZER: left out, with a note), one slice position twice, uneven slice spacing or missing
slices (the largest gap is named), positions that do not advance along the slice normal (gantry tilt or an
oblique stack: refused), and orientation changing within the series.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_ctorg.inference.slab_volume import SlabVolume

# DICOM tags as SimpleITK names them
SERIES_UID, MODALITY, IMAGE_TYPE = "0020|000e", "0008|0060", "0008|0008"
POSITION, ORIENTATION = "0020|0032", "0020|0037"
PATIENT_ID, SERIES_NUMBER = "0010|0020", "0020|0011"
# must agree within a series: matrix, pixel spacing, reconstruction (two reconstructions may share a UID)
UNIFORM = {"0028|0010": "Rows", "0028|0011": "Columns", "0028|0030": "PixelSpacing", "0018|0050": "SliceThickness",
           "0018|1210": "ConvolutionKernel"}
RESCALE_SLOPE, RESCALE_INTERCEPT, NUMBER_OF_FRAMES = "0028|1053", "0028|1052", "0028|0008"


@dataclass
class DicomSeries:
    """One CT series: its files in slice order and what was noticed while collecting them."""

    uid: str
    name: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    float_pixels: bool = False  # a rescale that is not integral or differs between slices
    origin: tuple[float, float, float] | None = None  # of the first slice in order, from the positions
    slice_spacing: float | None = None  # (last - first) / (n - 1) along the normal, as ITK's series reader
    direction: tuple[float, ...] | None = None  # row, column and normal cosines as columns (SimpleITK order)


def _tag(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _numbers(text: str, n: int, what: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split("\\")], float)
    except ValueError:
        values = np.array([])
    if values.size != n:
        raise ValueError(f"{what} is {text!r}, expected {n} numbers")
    return values


def _read_headers(path: Path):
    """The file's DICOM header as a SimpleITK reader, or ``None`` when the file is not DICOM."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader if reader.HasMetaDataKey(SERIES_UID) else None


def _order_slices(files: list[Path], positions: list[np.ndarray], orientations: list[np.ndarray],
                  what: str) -> tuple[list[Path], dict]:
    """(files sorted along the slice normal, their geometry), after the checks (``ValueError`` naming ``what``)."""
    first = orientations[0]
    if any(np.abs(o - first).max() > 1e-3 for o in orientations):
        raise ValueError(f"{what}: ImageOrientationPatient changes within the series")
    normal = np.cross(first[:3], first[3:])
    depth = np.array([p @ normal for p in positions])
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    if len(files) < 2:
        raise ValueError(f"{what}: a single slice is not a 3-D CT")
    steps = np.diff(depth)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise ValueError(f"{what}: two slices at the same position ({depth[i]:.2f} mm along the slice normal)")
    spacing = float(np.median(steps))
    if np.any(np.abs(steps - spacing) > max(0.01 * spacing, 1e-3)):
        i = int(np.argmax(np.abs(steps - spacing)))
        raise ValueError(f"{what}: uneven slice spacing — a gap of {steps[i]:.2f} mm after the slice at "
                         f"{depth[i]:.2f} mm where the series steps {spacing:.2f} mm (missing slices?)")
    sorted_positions = np.array([positions[i] for i in order])
    along = sorted_positions[-1] - sorted_positions[0]
    sideways = along - (along @ normal) * normal
    if np.linalg.norm(sideways) > 0.01 * abs(along @ normal) + 1e-3:
        raise ValueError(f"{what}: slice positions drift {np.linalg.norm(sideways):.1f} mm across the slice plane "
                         f"(gantry tilt or an oblique stack); resample it to an orthogonal grid first")
    geometry = {"origin": tuple(float(v) for v in sorted_positions[0]),
                "slice_spacing": float((depth[-1] - depth[0]) / (len(depth) - 1)),
                "direction": tuple(float(v) for v in np.stack([first[:3], first[3:], normal], axis=1).ravel())}
    return [files[i] for i in order], geometry


def find_dicom_series(in_dir: Path) -> dict[str, DicomSeries]:
    """Case name -> :class:`DicomSeries` of every DICOM series under ``in_dir`` (searched recursively).

    Series that cannot be predicted carry an ``error`` (one line); non-DICOM files are ignored.
    """
    in_dir = Path(in_dir)
    found: dict[str, dict] = {}
    for path in sorted(p for p in in_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        reader = _read_headers(path)
        if reader is None:
            continue
        uid = _tag(reader, SERIES_UID)
        s = found.setdefault(uid, {"files": [], "positions": [], "orientations": [], "localizers": 0,
                                   "modality": _tag(reader, MODALITY), "patient": _tag(reader, PATIENT_ID),
                                   "number": _tag(reader, SERIES_NUMBER), "error": None,
                                   "uniform": {key: set() for key in UNIFORM}, "rescale": set()})
        if "LOCALIZER" in _tag(reader, IMAGE_TYPE).upper():
            s["localizers"] += 1
            continue
        if int(_tag(reader, NUMBER_OF_FRAMES) or 1) > 1:
            s["error"] = s["error"] or (f"{path.name} is a multi-frame (enhanced) CT object, not supported yet; "
                                        f"convert the series to NIfTI first (e.g. dcm2niix)")
        for key in UNIFORM:
            s["uniform"][key].add(_tag(reader, key))
        s["rescale"].add((_tag(reader, RESCALE_SLOPE) or "1", _tag(reader, RESCALE_INTERCEPT) or "0"))
        try:
            s["positions"].append(_numbers(_tag(reader, POSITION), 3, f"{path.name}: ImagePositionPatient"))
            s["orientations"].append(_numbers(_tag(reader, ORIENTATION), 6, f"{path.name}: ImageOrientationPatient"))
        except ValueError as e:
            s["error"] = s["error"] or str(e)
        s["files"].append(path)
    by_folder: dict[Path, set] = {}
    for uid, s in found.items():
        for f in s["files"]:
            by_folder.setdefault(f.parent, set()).add(uid)
    series: dict[str, DicomSeries] = {}
    for uid, s in found.items():
        folders = {f.parent for f in s["files"]}
        if len(folders) == 1 and (folder := folders.pop()) != in_dir and len(by_folder[folder]) == 1:
            name = folder.name
        else:
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{s['patient'] or 'unknown'}_{s['number'] or uid[-8:]}")
        what = f"DICOM series {name} ({uid})"
        item = DicomSeries(uid, name, s["files"])
        if s["localizers"]:
            item.notes.append(f"{what}: {s['localizers']} localizer image(s) left out")
        if not s["files"]:
            item.error = f"{what}: only localizer images"
        elif s["modality"].upper() != "CT":
            item.error = f"{what}: modality {s['modality'] or 'missing'!r}, not CT; refused"
        elif s["error"]:
            item.error = f"{what}: {s['error']}"
        elif mixed := [f"{UNIFORM[key]} ({', '.join(sorted(v or 'missing' for v in values))})"
                       for key, values in s["uniform"].items() if len(values) > 1]:
            item.error = f"{what}: slices differ in {'; '.join(mixed)}; refused (two reconstructions in one series?)"
        else:
            try:
                item.files, geometry = _order_slices(s["files"], s["positions"], s["orientations"], what)
                item.origin, item.slice_spacing, item.direction = (geometry["origin"], geometry["slice_spacing"],
                                                                   geometry["direction"])
            except ValueError as e:
                item.error = str(e)
            item.float_pixels = len(s["rescale"]) > 1 or any(float(v) != round(float(v))
                                                             for pair in s["rescale"] for v in pair)
        if name in series:  # e.g. patA/CT and patB/CT: the UID's end tells them apart
            name = item.name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}_{uid[-12:]}")
            item.notes.append(f"DICOM series {uid}: named {name!r} (its first name was taken)")
        series[name] = item
    return series


def _read_files(series: DicomSeries, files: list[Path]):
    """``files`` of ``series`` as one SimpleITK image (rescale applied by GDCM); ``ValueError`` naming the series."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    try:
        return reader.Execute()
    except RuntimeError as e:
        message = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise ValueError(f"DICOM series {series.name} ({series.uid}): cannot be read ({message}); a compressed "
                         f"transfer syntax GDCM cannot decode?") from e


def read_dicom_series(series: DicomSeries):
    """The whole series as a SimpleITK image; ``ValueError`` naming it if it cannot be predicted or read."""
    if series.error:
        raise ValueError(series.error)
    return _read_files(series, series.files)


class SeriesVolume(SlabVolume):
    """A DICOM series as a (z, y, x) array that reads only the files of the slices it is indexed with
    (:class:`~nnunet_ctorg.inference.slab_volume.SlabVolume`), so the chunked predictor reads the CT slab by
    slab instead of holding it whole. Integer pixels (after GDCM's rescale) are returned as int16, others as
    float32.
    """

    piece = 16  # files read at once

    def __init__(self, series: DicomSeries) -> None:
        import SimpleITK as sitk

        if series.error:
            raise ValueError(series.error)
        self.series = series
        first = self._read(series.files[:1])
        self._integer = not series.float_pixels and first.GetPixelID() in (
            sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32)
        self.dtype = np.dtype(np.int16 if self._integer else np.float32)
        nx, ny = first.GetSize()[:2]
        self.shape = (len(series.files), ny, nx)
        # the geometry ITK's series reader gives the whole series: mean slice step from the first and last
        spacing = (*first.GetSpacing()[:2], series.slice_spacing)
        self._geometry = (series.origin, spacing, series.direction)

    def _read(self, files: list[Path]):
        return _read_files(self.series, files)

    def _read_slices(self, along: range, rows: slice, columns: slice) -> np.ndarray:
        import SimpleITK as sitk

        out = None
        for start in range(0, len(along), self.piece):  # a few files at a time: no second copy of the block
            files = [self.series.files[i] for i in along[start:start + self.piece]]
            part = sitk.GetArrayViewFromImage(image := self._read(files))[:, rows, columns]
            if self._integer and part.dtype.kind == "f":
                raise ValueError(f"DICOM series {self.series.name}: slices {files[0].name}.. have a fractional "
                                 f"rescale the first slice does not have")
            if self._integer and (part.min() < -32768 or part.max() > 32767):
                raise ValueError(f"DICOM series {self.series.name}: values outside int16 after the rescale "
                                 f"({part.min()}..{part.max()})")
            if out is None:
                out = np.empty((len(along), *part.shape[1:]), self.dtype)
            out[start:start + len(files)] = part
            del part, image
        return out
