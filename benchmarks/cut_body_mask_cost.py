"""What closing the slices a field of view cuts (``close_cut_slices``) costs the full-resolution body mask.

The real CT of ``tests/data/real_ct`` (abdomen, 3 mm) is upsampled in-plane to 0.75 mm (404 x 488 per slice,
first ``--slices`` slices) and cut: 20 % off each side (the image edge cuts lungs and colon open). ``body_mask``
(the dataset merge's and labelers' mask) is timed on the uncut and the cut scan, with the closing and with it
replaced by an identity, in this process, best of ``--repeats``.

    python benchmarks/cut_body_mask_cost.py [--slices 100] [--repeats 3]
"""

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100, help="slices of the real CT to use (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per case, the best is kept (default 3)")
    args = parser.parse_args()
    if args.slices < 2 or args.repeats < 1:
        parser.error(f"--slices must be >= 2 and --repeats >= 1, got {args.slices} and {args.repeats}")

    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    import nnunet_ctorg.inference.body_crop as body_crop
    from nnunet_ctorg.body import body_mask

    ct = sitk.ReadImage(str(REPO / "tests" / "data" / "real_ct" / "example_ct.nii.gz"))
    hu = ndimage.zoom(sitk.GetArrayFromImage(ct)[:args.slices].astype(np.float32), (1, 4, 4), order=1)
    n = hu.shape[2]
    scans = {"uncut": hu, "cut": np.ascontiguousarray(hu[:, :, n // 5:n - n // 5])}
    spacing = (3.0, 0.75, 0.75)
    close = body_crop.close_cut_slices
    seconds = {}
    for name, scan in scans.items():
        for closing in (True, False):
            body_crop.close_cut_slices = close if closing else (lambda body, *a, **k: body)
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                body_mask(scan, spacing=spacing)
                best = min(best, time.perf_counter() - started)
            seconds[name, closing] = best
    body_crop.close_cut_slices = close
    for name, scan in scans.items():
        with_, without = seconds[name, True], seconds[name, False]
        print(f"{name:5s} {scan.shape}: body_mask {with_:.2f} s with the closing, {without:.2f} s without "
              f"({with_ / without:.2f}x; {(with_ - without) / scan.shape[0] * 1000:.0f} ms per slice)")


if __name__ == "__main__":
    main()
