"""Morphology and labeler speed on a 512 x 512 x 300 phantom at 0.8 x 0.8 x 1.5 mm.

1. Closing of the phantom's bone threshold (> 200 HU) with a 2.5 cm (diameter) ball: our EDT
   path vs ``scipy.ndimage.binary_closing`` with the same ball, in the same run. scipy takes
   minutes at full size, so both are timed on the same central crop and checked for identical
   voxels there; our path is also timed at full size.
2. Lung and bone labelers (paper and improved modes) at full size: wall time and peak RSS, each
   in its own process so that the peak belongs to that labeler alone.

    python benchmarks/morphology.py [--crop 160 160 96]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = (300, 512, 512)
SPACING_ZYX = (1.5, 0.8, 0.8)


def phantom_ct(path: Path) -> None:
    import numpy as np

    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=0, fov="thorax_abdomen", spacing=SPACING_ZYX[::-1])
    ct = ph.ct
    z0 = max((ct.shape[0] - SHAPE[0]) // 2, 0)
    y0, x0 = ((ct.shape[1] - SHAPE[1]) // 2, (ct.shape[2] - SHAPE[2]) // 2)
    np.save(path, np.ascontiguousarray(ct[z0:z0 + SHAPE[0], y0:y0 + SHAPE[1], x0:x0 + SHAPE[2]]))


def peak_rss_gb() -> float:
    """This process's high-water mark (VmHWM; unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_labeler(ct_path: str, organ: str, mode: str) -> None:
    import numpy as np

    from nnunet_ctorg.labelers import label_bones, label_lungs

    hu = np.load(ct_path).astype(np.float32)
    before_gb = peak_rss_gb()
    t = time.perf_counter()
    mask = (label_lungs if organ == "lungs" else label_bones)(hu, SPACING_ZYX, mode)
    seconds = time.perf_counter() - t
    peak_gb = peak_rss_gb()
    print(json.dumps({"organ": organ, "mode": mode, "seconds": seconds, "peak_rss_gb": peak_gb,
                      "before_gb": before_gb, "voxels": int(mask.sum())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, nargs=3, default=(96, 160, 160), metavar=("Z", "Y", "X"),
                        help="central crop on which scipy is timed. Default: 96 160 160")
    parser.add_argument("--labeler", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.labeler:
        run_labeler(*args.labeler)
        return

    import numpy as np
    from scipy import ndimage

    from nnunet_ctorg.morphology import ball, closing

    with tempfile.TemporaryDirectory() as tmp:
        ct_path = Path(tmp) / "ct.npy"
        t = time.perf_counter()
        phantom_ct(ct_path)
        hu = np.load(ct_path)
        print(f"phantom {hu.shape} at {SPACING_ZYX} mm (z, y, x) in {time.perf_counter() - t:.0f} s")
        mask = hu > 200
        radius = 12.5
        t = time.perf_counter()
        closing(mask, radius, SPACING_ZYX, backend="edt")
        full = time.perf_counter() - t
        print(f"closing, 2.5 cm ball, full volume, EDT: {full:.2f} s")
        cz, cy, cx = args.crop
        z0, y0, x0 = [(s - c) // 2 for s, c in zip(mask.shape, (cz, cy, cx))]
        crop = np.ascontiguousarray(mask[z0:z0 + cz, y0:y0 + cy, x0:x0 + cx])
        t = time.perf_counter()
        ours = closing(crop, radius, SPACING_ZYX, backend="edt")
        t_ours = time.perf_counter() - t
        se = ball(radius, SPACING_ZYX)
        t = time.perf_counter()
        reference = ndimage.binary_closing(crop, se)
        t_scipy = time.perf_counter() - t
        print(f"crop {crop.shape}, ball {se.shape} ({int(se.sum())} voxels): EDT {t_ours:.3f} s, scipy "
              f"{t_scipy:.1f} s, ratio {t_scipy / t_ours:.0f}x, identical voxels: {np.array_equal(ours, reference)}")
        for organ in ("lungs", "bones"):
            for mode in ("paper", "improved"):
                out = subprocess.run([sys.executable, __file__, "--labeler", str(ct_path), organ, mode],
                                     capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"{organ} labeler ({mode}): {r['seconds']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB "
                      f"(process; {r['before_gb']:.2f} GB after loading the CT), {r['voxels']} voxels")


if __name__ == "__main__":
    main()
