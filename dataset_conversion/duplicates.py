"""The same scan in several converted datasets: fingerprints, matching, confirmation on the voxels.

Why: CT-ORG's dedicated CTs come from LiTS (paper 000, "Data Records"), AbdomenCT-1K holds LiTS, KiTS and
MSD scans (paper 004, table 1) and hides which case is which (AbdomenCT-1K issues #11, #21, #31), and one
LiTS scan is in AbdomenCT-1K twice (issue #28). On the way the files were renamed, their headers rewritten
(issue #27: twenty LiTS volumes stored with 1 mm spacing and an identity affine), arrays stored flipped or
transposed, as float or int16, with or without the rescale intercept, and cut to fewer slices.

The fingerprint of a converted image is, along each of its three array axes, the standard deviation of
every slice. A slice's standard deviation does not change when the slice is flipped or transposed, when a
constant is added to every voxel, or when the scan is cut along that axis; it is computed slab by slab from
the array already in memory while the case is converted (``write_fingerprint``, called by ``write_case``),
so no second read of the image is needed. Exact integer sums make it bit-identical for whole-HU copies.

Matching (``candidate_matches``): runs of three consecutive slice values are hashed (forwards and
backwards, with the slice size) and joined by sorting; a pair of scans whose equal runs agree on one shift
between their slice indices is a candidate, kept when at least 90 % of the overlapping slices agree to
0.01 HU. No voxel is compared in this step: 2,500 fingerprints are matched in seconds.

Confirmation (``confirm_match``): the two images are read and the candidate's in-plane arrangement (axis
order and flips, eight choices) is found on one slice and checked on every overlapping slice: the
difference between the two must be one constant (the intensity offset) up to the storage's rounding
(``ROUNDING_HU``). The result is a ``GridMapping``: which axis of one grid is which of the other, flipped or
not, and the shift between their indices.
"""

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FINGERPRINT_FOLDER = "fingerprints"
SLAB_SLICES = 16             # slices per slab while fingerprinting: 16 x 512 x 512 float64 = 32 MB
STD_QUANTUM_HU = 0.1         # bin width of a slice's standard deviation in the hash
MIN_SLICE_STD_HU = 1.0       # slices flatter than this (padding, air) carry no identity
MAX_BUCKET = 64              # a hash shared by more runs than this is too common to tell scans apart
MIN_VOTES = 5                # equal runs at one shift before a pair is a candidate
MIN_OVERLAP_SLICES = 8       # a shorter overlap is not evidence of the same scan
STD_TOLERANCE_HU = 0.01      # two copies' slice deviations agree within this (float storage, summation order)
MIN_AGREEING = 0.9           # share of the overlap's informative slices that must agree
ROUNDING_HU = 1.0            # voxels of two copies differ from their constant offset by at most this


@dataclass(frozen=True)
class Fingerprint:
    """The standard deviation of every slice along each array axis of a scan (numpy order z, y, x)."""

    shape: tuple[int, int, int]
    slice_std: tuple[np.ndarray, np.ndarray, np.ndarray]


def fingerprint_array(array: np.ndarray, slab: int = SLAB_SLICES) -> Fingerprint:
    """The fingerprint of a 3-D array, read ``slab`` slices of axis 0 at a time."""
    if array.ndim != 3:
        raise ValueError(f"a fingerprint needs a 3-D array, got shape {array.shape}")
    if slab < 1:
        raise ValueError(f"slab must be >= 1, got {slab}")
    whole = np.issubdtype(array.dtype, np.integer)
    sums = [np.zeros(n, dtype=np.int64 if whole else np.float64) for n in array.shape]
    squares = [np.zeros(n, dtype=np.int64 if whole else np.float64) for n in array.shape]
    for start in range(0, array.shape[0], slab):
        block = array[start:start + slab].astype(np.int64 if whole else np.float64)
        for values, totals in ((block, sums), (block * block, squares)):
            rows = values.sum(axis=2)
            totals[0][start:start + len(block)] += rows.sum(axis=1)
            totals[1] += rows.sum(axis=0)
            totals[2] += values.sum(axis=1).sum(axis=0)
    deviations = []
    for axis, (s1, s2) in enumerate(zip(sums, squares)):
        n = array.size // array.shape[axis]
        # whole values (int storage, or float storage of whole HU: float64 sums of them are exact below 2**53):
        # n*S2 - S1^2 in exact integers (Python ints: no overflow), then one rounding, whatever the storage
        if whole or (np.array_equal(s2, np.rint(s2)) and np.array_equal(s1, np.rint(s1))
                     and np.abs(s2).max(initial=0) < 2.0 ** 53):
            variance = np.array([(n * int(b) - int(a) ** 2) / (n * n) for a, b in zip(s1, s2)])
        else:
            mean = s1 / n
            variance = s2 / n - mean * mean
        deviations.append(np.sqrt(np.maximum(variance, 0.0)))
    return Fingerprint(tuple(int(n) for n in array.shape), tuple(deviations))


def fingerprint_image(image) -> Fingerprint:
    """The fingerprint of a SimpleITK image (its voxel array, without a copy)."""
    import SimpleITK as sitk

    return fingerprint_array(sitk.GetArrayViewFromImage(image))


def fingerprint_path(dataset: Path, case: str) -> Path:
    return Path(dataset) / FINGERPRINT_FOLDER / f"{case}.npz"


def save_fingerprint(fingerprint: Fingerprint, path: Path) -> None:
    """Write a fingerprint through a temporary name."""
    from nnunet_ctorg.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, shape=np.array(fingerprint.shape), **{f"axis{k}": s for k, s in enumerate(fingerprint.slice_std)})


def load_fingerprint(path: Path) -> Fingerprint:
    with np.load(path) as data:
        return Fingerprint(tuple(int(n) for n in data["shape"]), tuple(data[f"axis{k}"] for k in range(3)))


def write_fingerprint(dataset: Path, case: str, image) -> None:
    """Fingerprint a case's image while it is converted (``write_case``) and store it in the dataset."""
    save_fingerprint(fingerprint_image(image), fingerprint_path(dataset, case))


def case_fingerprint(dataset: Path, case: str, image_path: Path) -> Fingerprint:
    """The stored fingerprint of a converted case; computed from its image (and stored) when missing or
    unreadable, as for datasets converted before fingerprints existed."""
    from nnunet_ctorg.io import read_image

    path = fingerprint_path(dataset, case)
    if path.is_file():
        try:
            return load_fingerprint(path)
        except (OSError, ValueError, KeyError):
            pass
    fingerprint = fingerprint_image(read_image(image_path, f"{case}: image"))
    save_fingerprint(fingerprint, path)
    return fingerprint


@dataclass(frozen=True)
class SliceMatch:
    """Two scans whose slice deviations agree along one axis of each: slice ``i`` of ``case_a``'s
    ``axis_a`` is slice ``shift + i`` (``shift - i`` when ``reversed``) of ``case_b``'s ``axis_b``."""

    case_a: str
    case_b: str
    axis_a: int
    axis_b: int
    reversed: bool
    shift: int
    overlap: tuple[int, int]   # slices of case_a's axis that case_b also holds
    agreeing: float            # share of the overlap's informative slices whose deviations agree


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _run_hashes(std: np.ndarray, plane: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of the runs of three informative slices, forwards and backwards, and the runs' first slices."""
    q = np.floor(std / STD_QUANTUM_HU).astype(np.uint64)
    ok = std >= MIN_SLICE_STD_HU
    start = np.flatnonzero(ok[:-2] & ok[1:-1] & ok[2:]) if len(std) >= 3 else np.zeros(0, dtype=np.int64)
    seed = np.uint64(plane[0] * 65537 + plane[1])

    def mix(a, b, c):
        with np.errstate(over="ignore"):
            h = seed * _MIX[0] + a
            h = (h ^ (h >> np.uint64(29))) * _MIX[1] + b
            h = (h ^ (h >> np.uint64(31))) * _MIX[2] + c
            return h ^ (h >> np.uint64(32))

    return mix(q[start], q[start + 1], q[start + 2]), mix(q[start + 2], q[start + 1], q[start]), start


def _votes(fingerprints: list[Fingerprint]) -> dict[tuple, int]:
    """(case a, axis a, case b, axis b, reversed, shift) -> number of equal runs, for case a < case b."""
    keys, case, axis, first, backwards = [], [], [], [], []
    for c, fp in enumerate(fingerprints):
        for a in range(3):
            plane = tuple(sorted(n for k, n in enumerate(fp.shape) if k != a))
            forward, backward, start = _run_hashes(fp.slice_std[a], plane)
            for hashes, is_backward in ((forward, False), (backward, True)):
                keys.append(hashes)
                case.append(np.full(len(start), c))
                axis.append(np.full(len(start), a))
                first.append(start)
                backwards.append(np.full(len(start), is_backward))
    if not keys:
        return {}
    keys, case, axis, first, backwards = (np.concatenate(v) for v in (keys, case, axis, first, backwards))
    order = np.argsort(keys, kind="stable")
    keys, case, axis, first, backwards = keys[order], case[order], axis[order], first[order], backwards[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    starts, stops = np.r_[0, bounds], np.r_[bounds, len(keys)]
    votes: dict[tuple, int] = {}
    for lo, hi in zip(starts[stops - starts >= 2], stops[stops - starts >= 2]):
        if hi - lo > MAX_BUCKET:
            continue
        for u in range(lo, hi):
            for v in range(u + 1, hi):
                if case[u] == case[v] or (backwards[u] and backwards[v]):
                    continue
                a, b = (u, v) if case[u] < case[v] else (v, u)
                if backwards[a] or backwards[b]:   # one run read backwards: index_b = (i + j + 2) - index_a
                    key = (case[a], axis[a], case[b], axis[b], True, int(first[a] + first[b] + 2))
                else:                              # both forwards: index_b = index_a + (j - i)
                    key = (case[a], axis[a], case[b], axis[b], False, int(first[b] - first[a]))
                votes[key] = votes.get(key, 0) + 1
    return votes


def _agreement(std_a: np.ndarray, std_b: np.ndarray, reversed_: bool, shift: int
               ) -> tuple[tuple[int, int], float, int]:
    """The overlap (slices of a), the share of its informative slices that agree, and how many there are."""
    n_a, n_b = len(std_a), len(std_b)
    i = np.arange(n_a)
    j = shift - i if reversed_ else shift + i
    inside = (j >= 0) & (j < n_b)
    if not inside.any():
        return (0, 0), 0.0, 0
    i, j = i[inside], j[inside]
    informative = (std_a[i] >= MIN_SLICE_STD_HU) | (std_b[j] >= MIN_SLICE_STD_HU)
    close = np.abs(std_a[i] - std_b[j]) <= STD_TOLERANCE_HU + 1e-6 * std_a[i]
    n = int(informative.sum())
    return (int(i.min()), int(i.max()) + 1), float(close[informative].mean()) if n else 0.0, n


def candidate_matches(fingerprints: dict[str, Fingerprint]) -> list[SliceMatch]:
    """Pairs of scans that look like the same scan, best first per pair (no voxel is read)."""
    names = sorted(fingerprints)
    prints = [fingerprints[n] for n in names]
    found: dict[tuple[str, str], list[SliceMatch]] = {}
    for (ca, aa, cb, ab, reversed_, shift), count in _votes(prints).items():
        if count < MIN_VOTES:
            continue
        overlap, agreeing, informative = _agreement(prints[ca].slice_std[aa], prints[cb].slice_std[ab],
                                                    reversed_, shift)
        if informative < MIN_OVERLAP_SLICES or agreeing < MIN_AGREEING:
            continue
        match = SliceMatch(names[ca], names[cb], int(aa), int(ab), bool(reversed_), shift, overlap, agreeing)
        found.setdefault((match.case_a, match.case_b), []).append(match)
    return [m for pair in sorted(found) for m in sorted(found[pair], key=lambda m: (-m.agreeing,
                                                                                    m.overlap[0] - m.overlap[1]))]


@dataclass(frozen=True)
class GridMapping:
    """How scan b's voxel grid lies on scan a's: a's axis ``k`` is b's axis ``axes[k]``, and index ``i``
    along it is b's index ``shift[k] + i`` (``shift[k] - i`` where ``flips[k]``)."""

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    shift: tuple[int, int, int]

    def b_on_a(self, array_b: np.ndarray, shape_a: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
        """The region of a's grid that b covers, and b's voxels there (a view, in a's axis order)."""
        view = np.transpose(array_b, self.axes)
        region, take = [], []
        for k in range(3):
            n_b = view.shape[k]
            if self.flips[k]:
                view = np.flip(view, axis=k)
                s = n_b - 1 - self.shift[k]   # flipped: index in the flipped view = s + i
            else:
                s = self.shift[k]
            lo, hi = max(0, -s), min(shape_a[k], n_b - s)
            if hi <= lo:
                return tuple(slice(0, 0) for _ in range(3)), view[:0, :0, :0]
            region.append(slice(lo, hi))
            take.append(slice(lo + s, hi + s))
        return tuple(region), view[tuple(take)]

    def inverse(self) -> "GridMapping":
        """The mapping of a's grid onto b's."""
        axes, flips, shift = [0, 0, 0], [False] * 3, [0, 0, 0]
        for k, kb in enumerate(self.axes):
            axes[kb], flips[kb] = k, self.flips[k]
            shift[kb] = self.shift[k] if self.flips[k] else -self.shift[k]
        return GridMapping(tuple(axes), tuple(flips), tuple(shift))

    def to_json(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "GridMapping":
        return cls(tuple(int(v) for v in data["axes"]), tuple(bool(v) for v in data["flips"]),
                   tuple(int(v) for v in data["shift"]))


@dataclass(frozen=True)
class ConfirmedDuplicate:
    """Two cases confirmed on their voxels to be the same scan."""

    case_a: str
    case_b: str
    mapping: GridMapping
    intensity_offset: float       # b's voxels minus a's
    max_deviation_hu: float       # largest departure from that constant (storage rounding)
    overlap_voxels: int
    slices_a: tuple[int, int]     # the overlap along the matched axis of a


def _in_plane_mappings(match: SliceMatch, shape_a: tuple[int, ...], shape_b: tuple[int, ...]
                       ) -> Iterable[GridMapping]:
    others_a = [k for k in range(3) if k != match.axis_a]
    others_b = [k for k in range(3) if k != match.axis_b]
    for order in (others_b, others_b[::-1]):
        if [shape_b[k] for k in order] != [shape_a[k] for k in others_a]:
            continue
        for flip_p in (False, True):
            for flip_q in (False, True):
                axes, flips, shift = [0, 0, 0], [False] * 3, [0, 0, 0]
                axes[match.axis_a], flips[match.axis_a], shift[match.axis_a] = match.axis_b, match.reversed, match.shift
                for k, kb, flip in ((others_a[0], order[0], flip_p), (others_a[1], order[1], flip_q)):
                    axes[k], flips[k], shift[k] = kb, flip, (shape_b[kb] - 1 if flip else 0)
                yield GridMapping(tuple(axes), tuple(flips), tuple(shift))


def _constant_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The median of b - a and the largest departure from it."""
    diff = b.astype(np.float64) - a.astype(np.float64)
    offset = float(np.median(diff))
    return offset, float(np.abs(diff - offset).max(initial=0.0))


def confirm_match(match: SliceMatch, array_a: np.ndarray, array_b: np.ndarray) -> ConfirmedDuplicate | None:
    """The candidate confirmed on the voxels (every overlapping slice b - a one constant up to
    ``ROUNDING_HU``), or ``None``."""
    for mapping in _in_plane_mappings(match, array_a.shape, array_b.shape):
        region, b = mapping.b_on_a(array_b, array_a.shape)
        a = array_a[region]
        if b.size == 0 or b.shape != a.shape:
            continue
        # the middle slice first (cheap: rejects a wrong arrangement), then the whole overlap slab by slab
        k = match.axis_a
        middle = a.shape[k] // 2
        probe = [slice(None)] * 3
        probe[k] = slice(middle, middle + 1)
        offset, deviation = _constant_difference(a[tuple(probe)], b[tuple(probe)])
        if deviation > ROUNDING_HU:
            continue
        worst = 0.0
        for lo in range(0, a.shape[k], SLAB_SLICES):
            probe[k] = slice(lo, lo + SLAB_SLICES)
            diff = b[tuple(probe)].astype(np.float64) - a[tuple(probe)].astype(np.float64)
            worst = max(worst, float(np.abs(diff - offset).max(initial=0.0)))
            if worst > ROUNDING_HU:
                break
        if worst <= ROUNDING_HU:
            return ConfirmedDuplicate(match.case_a, match.case_b, mapping, offset, worst, int(a.size),
                                      (region[k].start, region[k].stop))
    return None


# ---------------------------------------------------------------------------------------------------------
# Converted datasets


@dataclass(frozen=True)
class ConvertedCase:
    """A case of a dataset written by the converters (its record names the source)."""

    dataset: Path
    case: str
    split: str

    @property
    def key(self) -> str:
        return f"{self.dataset.name}/{self.case}"

    @property
    def image(self) -> Path:
        return self.dataset / f"images{self.split}" / f"{self.case}_0000.nii.gz"

    @property
    def label(self) -> Path:
        return self.dataset / f"labels{self.split}" / f"{self.case}.nii.gz"


def converted_cases(dataset: Path) -> list[ConvertedCase]:
    """The cases of a converted dataset that have an image (training and test)."""
    found = []
    for split in ("Tr", "Ts"):
        folder = dataset / f"images{split}"
        for image in sorted(folder.glob("*_0000.nii.gz")) if folder.is_dir() else []:
            found.append(ConvertedCase(dataset, image.name[:-len("_0000.nii.gz")], split))
    return found


def read_array(path: Path, what: str) -> np.ndarray:
    import SimpleITK as sitk

    from nnunet_ctorg.io import read_image

    return sitk.GetArrayFromImage(read_image(path, what))


def find_duplicates(cases: list[ConvertedCase], progress: bool = False
                    ) -> tuple[list[ConfirmedDuplicate], list[SliceMatch]]:
    """Every pair of ``cases`` that is one scan (cases named by ``ConvertedCase.key``), and the candidates
    that the voxels did not confirm. Reads each fingerprint (computing missing ones) and, for the candidates
    only, the two images."""
    from tqdm import tqdm

    by_key = {c.key: c for c in cases}
    if len(by_key) != len(cases):
        raise ValueError("a case is listed twice")
    prints = {c.key: case_fingerprint(c.dataset, c.case, c.image)
              for c in tqdm(cases, desc="fingerprints", unit="case", disable=not progress)}
    confirmed, rejected, done = [], [], set()
    candidates = candidate_matches(prints)
    for match in tqdm(candidates, desc="confirming on the voxels", unit="pair", disable=not progress):
        if (match.case_a, match.case_b) in done:
            continue
        a, b = by_key[match.case_a], by_key[match.case_b]
        result = confirm_match(match, read_array(a.image, f"{a.key}: image"), read_array(b.image, f"{b.key}: image"))
        if result is None:
            rejected.append(match)
        else:
            confirmed.append(result)
            done.add((match.case_a, match.case_b))
    rejected = [m for m in rejected if (m.case_a, m.case_b) not in done]
    return confirmed, rejected


def documented_groups(cases: list[ConvertedCase]) -> list[dict]:
    """The duplicate groups that the datasets' own documentation names (the known-bad table's ``same_fold``
    groups, e.g. AbdomenCT-1K issue #28), as converted case keys, for checking what the fingerprints find."""
    from nnunet_ctorg.dataset_conversion.common import load_known_bad

    groups: dict[str, dict] = {}
    by_source_case: dict[tuple[str, str], str] = {}
    for c in cases:
        record_path = c.dataset / "annotations" / f"{c.case}.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            by_source_case[(record.get("source", ""), record.get("source_case", ""))] = c.key
    for source in {s for s, _ in by_source_case}:
        for name, entry in load_known_bad(source).items():
            if entry["action"] == "same_fold":
                group = groups.setdefault(entry["group"], {"group": entry["group"], "reference": entry.get(
                    "reference", ""), "cases": []})
                if (source, name) in by_source_case:
                    group["cases"].append(by_source_case[(source, name)])
    return [g for g in groups.values() if len(g["cases"]) >= 2]


def duplicate_report(confirmed: list[ConfirmedDuplicate], rejected: list[SliceMatch],
                     documented: list[dict]) -> dict:
    """The evidence of each duplicate as JSON, and whether each documented group was found."""
    pairs = {(d.case_a, d.case_b) for d in confirmed} | {(d.case_b, d.case_a) for d in confirmed}
    for group in documented:
        cases = group["cases"]
        group["found"] = all((x, y) in pairs for i, x in enumerate(cases) for y in cases[i + 1:])
    return {
        "duplicates": [{"case_a": d.case_a, "case_b": d.case_b, "mapping": d.mapping.to_json(),
                        "intensity_offset": d.intensity_offset, "max_deviation_hu": d.max_deviation_hu,
                        "overlap_voxels": d.overlap_voxels, "overlap_slices_a": list(d.slices_a)}
                       for d in confirmed],
        "rejected_candidates": [{**asdict(m), "overlap": list(m.overlap)} for m in rejected],
        "documented_groups": documented,
    }


def describe(d: ConfirmedDuplicate) -> str:
    """One line of evidence: how b's grid lies on a's, the offset and the overlap."""
    axes = "".join("zyx"[k] for k in d.mapping.axes)
    flips = ",".join("zyx"[k] for k in range(3) if d.mapping.flips[k]) or "none"
    return (f"{d.case_a} == {d.case_b}: b's axes {axes} on a's zyx, flipped {flips}, shift {list(d.mapping.shift)}, "
            f"intensity b - a = {d.intensity_offset:g} HU (max deviation {d.max_deviation_hu:g}), "
            f"{d.overlap_voxels} voxels, slices {d.slices_a[0]}-{d.slices_a[1] - 1} of a")
