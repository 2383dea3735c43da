"""Conversion throughput of the TotalSegmentator converter: cases per minute with 1 and 2 workers.

Writes a TotalSegmentator-layout phantom set (v2, 117 mask files per case) once, then converts it
into two fresh nnU-Net datasets, with 1 and with 2 worker processes, in the same run.

    python benchmarks/conversion_throughput.py [-n 20] [--spacing 3 3 3] [--work DIR]
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset
    from nnunet_ctorg.phantoms.cli import generate_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="number of cases. Default: 20")
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0),
                        help="voxel size in mm. Default: 3 3 3 (TotalSegmentator's 3 mm)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder. Default: a temporary one")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ctorg_bench_"))
    source = work / "totalseg"
    t = time.perf_counter()
    generate_dataset("totalseg", str(source), args.n, "abdomen", tuple(args.spacing), progress=False,
                     num_processes=min(2, os.cpu_count() or 1))
    print(f"phantoms: {args.n} cases at {tuple(args.spacing)} mm written in {time.perf_counter() - t:.0f} s")
    os.environ.setdefault("nnUNet_preprocessed", str(work / "preprocessed"))
    rates = {}
    for workers in (1, 2):
        raw = work / f"raw_{workers}"
        shutil.rmtree(raw, ignore_errors=True)
        t = time.perf_counter()
        convert_totalseg_dataset(source, raw, 900 + workers, num_processes=workers)
        rates[workers] = args.n / ((time.perf_counter() - t) / 60)
        print(f"{workers} worker(s): {rates[workers]:.1f} cases/min")
    print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x ({os.cpu_count()} CPU cores)")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
