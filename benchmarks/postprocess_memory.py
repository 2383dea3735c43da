"""Peak memory of the organ-aware postprocessing (``clean_segmentation``) per voxel of a long label volume.

The chunked predictor's RAM check for ``--postprocess`` counts ``POSTPROCESS_BYTES_PER_VOXEL`` (its label
input included); this measures what it needs: the organ labels of a head-to-knee phantom at 0.8 x 0.8 x
1.5 mm, mirrored to ``--slices`` slices, cleaned in this process, peak RSS (VmHWM, reset before the call)
above the RSS before it.

    python benchmarks/postprocess_memory.py [--slices 640]
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=640, help="label volume length (default 640)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from nnunet_ctorg.inference.chunk_budgets import POSTPROCESS_BYTES_PER_VOXEL, current_rss_gb, peak_rss_gb
    from nnunet_ctorg.phantoms import generate_phantom
    from postprocessing.organ_cleanup import clean_segmentation

    phantom = generate_phantom(seed=11, fov="head_knee", spacing=(0.8, 0.8, 1.5))
    labels = phantom.organ_labels()
    del phantom
    while labels.shape[0] < args.slices:
        labels = np.concatenate([labels, labels[::-1]], axis=0)
    labels = np.ascontiguousarray(labels[:args.slices])
    label_map = {"background": 0, "liver": 1, "bladder": 2, "lungs": 3, "kidneys": 4, "bone": 5}
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (Linux)
    before = current_rss_gb() - labels.nbytes / 1024**3  # the label input counts
    clean_segmentation(labels, (0.8, 0.8, 1.5), label_map)
    peak = peak_rss_gb()
    print(json.dumps({"shape": list(labels.shape), "peak_gb": round(peak, 3),
                      "bytes_per_voxel_with_input": round((peak - before) * 1024**3 / labels.size, 2),
                      "counted": POSTPROCESS_BYTES_PER_VOXEL}))


if __name__ == "__main__":
    main()
