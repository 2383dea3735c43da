"""What finding duplicate scans costs: fingerprinting during conversion, and matching at the three datasets' scale.

1. Conversion: N CT-ORG phantoms at CT-ORG's resolution (0.8 x 0.8 x 2.5 mm, 575 x 575 x ~170 voxels) are
   converted with and without the fingerprint (``write_case`` calls ``write_fingerprint``; the reference
   replaces it by a no-op), alternating, in one run; prints seconds per case of both and the overhead
   (target <= 10 %).
2. Matching: ``--n_scans`` fingerprints (default 2,500: CT-ORG 140 + TotalSegmentator 1,228 + AbdomenCT-1K
   1,062 and change) with ``--n_copies`` planted copies (flipped, cut, offset) go through
   ``candidate_matches``; prints the time, the planted pairs found and the other candidates (which the
   voxels would then reject). The fingerprints are synthetic: slice deviations as random walks whose
   slice-to-slice steps are drawn from the real CT's own (``tests/data/real_ct``), slice counts 80-900 and
   in-plane sizes 512 x 512 (most) or TotalSegmentator's varied ones. No voxel is read in this step.

    python benchmarks/duplicate_fingerprints.py [-n 2] [--n_scans 2500] [--n_copies 130]

Rows are appended to ``benchmarks/results/duplicate_fingerprints_2core.jsonl``.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def conversion_overhead(n: int, work: Path) -> dict:
    import nnunet_ctorg.dataset_conversion.common as common
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.phantoms.cli import generate_dataset

    src = work / "ctorg"
    generate_dataset("ctorg", str(src), n, "abdomen", (0.8, 0.8, 2.5), first_id=21, progress=False)
    real = common.write_fingerprint
    times = {"with": [], "without": []}
    for repeat in range(2):
        for mode in (("with", "without") if repeat % 2 == 0 else ("without", "with")):
            common.write_fingerprint = real if mode == "with" else (lambda *args: None)
            raw = work / f"raw_{mode}_{repeat}"
            t = time.perf_counter()
            convert_ctorg_dataset(src, raw, 900 + repeat * 2 + (mode == "with"), num_processes=1, strict=True)
            times[mode].append((time.perf_counter() - t) / n)
            shutil.rmtree(raw)
    common.write_fingerprint = real
    with_s, without_s = float(np.median(times["with"])), float(np.median(times["without"]))
    return {"cases": n, "s_per_case_with": with_s, "s_per_case_without": without_s,
            "overhead": with_s / without_s - 1.0}


def synthetic_fingerprints(n_scans: int, n_copies: int, seed: int = 0):
    import SimpleITK as sitk

    from nnunet_ctorg.dataset_conversion.duplicates import Fingerprint, fingerprint_array

    real = fingerprint_array(sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "tests/data/real_ct/example_ct.nii.gz"))))
    steps = np.concatenate([np.diff(s) for s in real.slice_std])
    rng = np.random.default_rng(seed)

    def walk(n: int) -> np.ndarray:
        return np.abs(rng.uniform(150, 600) + np.cumsum(rng.choice(steps, n)))

    prints = {}
    for k in range(n_scans):
        plane = (512, 512) if rng.random() < 0.6 else tuple(int(v) for v in rng.integers(150, 400, 2))
        z = int(rng.integers(80, 900))
        shape = (z, *plane)
        prints[f"scan{k:04d}"] = Fingerprint(shape, tuple(walk(n) for n in shape))
    planted = []
    for k in range(n_copies):  # a copy cut to 60-100 % of its slices and read backwards; other axes changed by the cut
        name = f"scan{k:04d}"
        fp = prints[name]
        z = fp.shape[0]
        lo = int(rng.integers(0, z // 5 + 1))
        hi = z - int(rng.integers(0, z // 5 + 1))
        std_z = fp.slice_std[0][lo:hi][::-1]
        copy = Fingerprint((hi - lo, fp.shape[1], fp.shape[2]), (std_z, walk(fp.shape[1]), walk(fp.shape[2])))
        prints[f"copy{k:04d}"] = copy
        planted.append((name, f"copy{k:04d}"))
    return prints, planted


def matching_time(n_scans: int, n_copies: int) -> dict:
    from nnunet_ctorg.dataset_conversion.duplicates import candidate_matches

    prints, planted = synthetic_fingerprints(n_scans, n_copies)
    t = time.perf_counter()
    matches = candidate_matches(prints)
    seconds = time.perf_counter() - t
    pairs = {(m.case_a, m.case_b) for m in matches}
    found = sum((a, b) in pairs or (b, a) in pairs for a, b in planted)
    return {"fingerprints": len(prints), "planted_pairs": len(planted), "planted_found": found,
            "other_candidates": len(pairs) - found, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2, help="CT-ORG phantoms to convert. Default: 2")
    parser.add_argument("--n_scans", type=int, default=2500, help="fingerprints to match. Default: 2500")
    parser.add_argument("--n_copies", type=int, default=130, help="planted copies among them. Default: 130")
    parser.add_argument("--skip_conversion", action="store_true", help="only the matching")
    args = parser.parse_args()
    row = {"cpu_cores": os.cpu_count()}
    row["matching"] = matching_time(args.n_scans, args.n_copies)
    m = row["matching"]
    print(f"matching {m['fingerprints']} fingerprints: {m['seconds']:.2f} s; planted copies found "
          f"{m['planted_found']}/{m['planted_pairs']}; other candidates {m['other_candidates']}", flush=True)
    if not args.skip_conversion:
        work = Path(tempfile.mkdtemp(prefix="ctorg_dups_"))
        os.environ.setdefault("nnUNet_preprocessed", str(work / "preprocessed"))
        try:
            row["conversion"] = conversion_overhead(args.n, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        c = row["conversion"]
        print(f"conversion of {c['cases']} CT-ORG phantoms (575 x 575 x ~170): {c['s_per_case_with']:.2f} s/case with "
              f"the fingerprint, {c['s_per_case_without']:.2f} without: overhead {100 * c['overhead']:+.1f} %")
    out = REPO / "benchmarks" / "results" / "duplicate_fingerprints_2core.jsonl"
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
