"""Conversion throughput of the three converters on phantoms laid out as the real downloads, and the time
to convert each whole public dataset on this machine, extrapolated from the measured rate per voxel.

For each source: writes N phantoms in the download's layout with its quirks (``--quirks`` of
``nnunet_ctorg_phantoms``: CT-ORG in OrganSegmentations/, every second TotalSegmentator and AbdomenCT-1K
case with a sheared header read through the nibabel fallback), converts them with 1 and 2 worker
processes in the same run, and prints cases/min, megavoxels/s and the speed-up. The whole-dataset figure
is (cases x assumed mean voxels per case) / measured megavoxels per second with 2 workers: the case counts
are the releases' (CT-ORG 140, TotalSegmentator v2.0.1 1228, AbdomenCT-1K 1000 labelled); the mean sizes
are assumptions printed with the result (override with --mean_mvox). TotalSegmentator's cost per case
also grows with its 117 mask files, which the phantoms reproduce.

    python benchmarks/conversion_throughput.py [-n 6] [--spacing 1.5 1.5 1.5] [--sources ctorg totalseg abdomenct1k]
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

# Cases of each release, and an assumed mean size in megavoxels (see the module docstring).
DATASETS = {
    "ctorg": (140, 512 * 512 * 400 / 1e6),        # 512 x 512 slices, about 75-990 slices per scan
    "totalseg": (1228, 300 * 300 * 300 / 1e6),    # resampled to 1.5 mm by the authors; sizes vary widely
    "abdomenct1k": (1000, 512 * 512 * 200 / 1e6),  # 512 x 512 slices, abdominal scans
}


def main() -> None:
    import SimpleITK as sitk

    from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset
    from nnunet_ctorg.phantoms.cli import generate_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=6, help="cases per source. Default: 6")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 1.5),
                        help="phantom voxel size in mm. Default: 1.5 1.5 1.5 (TotalSegmentator's)")
    parser.add_argument("--sources", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                        help="sources to measure. Default: all three")
    parser.add_argument("--mean_mvox", type=float, nargs=3, default=None, metavar=("CTORG", "TS", "ABD"),
                        help="assumed mean megavoxels per case of CT-ORG, TotalSegmentator and AbdomenCT-1K for "
                             "the extrapolation. Default: 104.9 27.0 52.4")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder. Default: a temporary one")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ctorg_bench_"))
    os.environ.setdefault("nnUNet_preprocessed", str(work / "preprocessed"))
    sizes = dict(zip(DATASETS, args.mean_mvox)) if args.mean_mvox else {k: v[1] for k, v in DATASETS.items()}
    convert = {"ctorg": convert_ctorg_dataset, "totalseg": convert_totalseg_dataset,
               "abdomenct1k": convert_abdomenct1k_dataset}
    fov = {"ctorg": "thorax_abdomen", "totalseg": "thorax_abdomen", "abdomenct1k": "abdomen"}
    lines = []
    for k, source in enumerate(args.sources):
        src = work / source
        t = time.perf_counter()
        generate_dataset(source, str(src), args.n, fov[source], tuple(args.spacing), first_id=21 if source == "ctorg"
                         else 0, progress=False, num_processes=min(2, os.cpu_count() or 1), quirks=True)
        rates = {}
        for workers in (1, 2):
            raw = work / f"raw_{source}_{workers}"
            shutil.rmtree(raw, ignore_errors=True)
            t = time.perf_counter()
            out = convert[source](src, raw, 900 + 10 * k + workers, num_processes=workers, strict=True)
            seconds = time.perf_counter() - t
            cases = sorted(out.glob("images*/*.nii.gz"))
            mvox = sum(sitk.ReadImage(str(c)).GetNumberOfPixels() for c in cases) / 1e6
            rates[workers] = (len(cases) / (seconds / 60), mvox / seconds, mvox / len(cases))
            print(f"{source}: {workers} worker(s): {rates[workers][0]:.1f} cases/min, {rates[workers][1]:.2f} MVox/s "
                  f"({len(cases)} cases of {rates[workers][2]:.1f} MVox)", flush=True)
        n_cases, mean_mvox = DATASETS[source][0], sizes[source]
        hours = n_cases * mean_mvox / rates[2][1] / 3600
        lines.append(f"{source}: 2 workers {rates[2][1]:.2f} MVox/s, speed-up {rates[2][1] / rates[1][1]:.2f}x; "
                     f"whole dataset ({n_cases} cases x {mean_mvox:.0f} MVox assumed) ~ {hours:.1f} h")
    print(f"--- {os.cpu_count()} CPU cores ---")
    print("\n".join(lines))
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
