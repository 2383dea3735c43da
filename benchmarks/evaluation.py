"""Evaluation speed: one 512 x 512 x 300 case with all 8 organs of the default scheme present.

The reference is the organ labels of a head-to-knee phantom at 0.8 x 0.8 x 4.4 mm (so that brain
and bladder both fit in 300 slices; the arms are cropped by the 512 x 512 window); the prediction perturbs every organ
(dilated, eroded, shifted, islands added), so every metric has real work to do. Times
``evaluate_folders`` end to end (reading both NIfTI files, all metrics, CSV/JSON/markdown), and
for scale the reading of the two files alone. Target (issue 7): under 10 s on the 2-core CPU.

    python benchmarks/evaluation.py [--processes 1]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

SHAPE = (300, 512, 512)
SPACING_XYZ = (0.8, 0.8, 4.4)


def write_case(folder: Path) -> None:
    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    from nnunet_ctorg.labels import DEFAULT_LABELS as L
    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=0, fov="head_knee", spacing=SPACING_XYZ)
    seg = ph.organ_labels()
    z0 = max((seg.shape[0] - SHAPE[0]) // 2, 0)
    y0, x0 = (seg.shape[1] - SHAPE[1]) // 2, (seg.shape[2] - SHAPE[2]) // 2
    ref = np.zeros(SHAPE, np.uint8)
    crop = seg[z0:z0 + SHAPE[0], y0:y0 + SHAPE[1], x0:x0 + SHAPE[2]]
    ref[:crop.shape[0], :crop.shape[1], :crop.shape[2]] = crop
    del ph, seg
    pred = ref.copy()
    for organ, how in (("liver", "dilate"), ("lungs", "erode"), ("kidneys", "shift"), ("bone", "erode"),
                       ("spleen", "shift"), ("pancreas", "dilate"), ("bladder", "dilate")):
        m = ref == L[organ]
        if how == "dilate":
            new = ndimage.binary_dilation(m, iterations=2) & (ref == 0)
            pred[new] = L[organ]
        elif how == "erode":
            pred[m & ~ndimage.binary_erosion(m)] = 0
        else:
            pred[m] = 0
            pred[np.roll(m, 3, axis=2) & (pred == 0)] = L[organ]
    rng = np.random.default_rng(0)
    for _ in range(50):
        z, y, x = (int(rng.integers(0, n - 3)) for n in SHAPE)
        pred[z:z + 3, y:y + 3, x:x + 3] = L["bone"]
    present = sorted(set(np.unique(ref).tolist()) - {0})
    if len(present) != 8:
        raise RuntimeError(f"expected all 8 organs in the reference, found ids {present}")
    for name, array in (("ref", ref), ("pred", pred)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING_XYZ)
        (folder / name).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / name / "case.nii.gz"))
    (folder / "pred" / "dataset.json").write_text(json.dumps({"labels": L, "file_ending": ".nii.gz"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()

    import SimpleITK as sitk

    from nnunet_ctorg.evaluation.evaluate import evaluate_folders

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        write_case(folder)
        print(f"case written in {time.perf_counter() - t:.1f} s ({SHAPE[2]} x {SHAPE[1]} x {SHAPE[0]}, spacing "
              f"{SPACING_XYZ} mm)")
        t = time.perf_counter()
        for name in ("ref", "pred"):
            sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name / "case.nii.gz")))
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        summary = evaluate_folders(folder / "ref", folder / "pred", folder / "out", num_processes=args.processes,
                                   progress=False)
        total_s = time.perf_counter() - t
        print((folder / "out" / "summary.md").read_text())
        print(json.dumps({"evaluate_s": round(total_s, 2), "reading_both_files_s": round(read_s, 2),
                          "target_s": 10.0, "ratio_to_target": round(total_s / 10.0, 3),
                          "organs": len(summary["organs"])}))


if __name__ == "__main__":
    main()
