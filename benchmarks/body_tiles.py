"""Tiles the chunked predictor runs for a head-to-knee CT with nnU-Net's real-size 3d_fullres plan: nnU-Net's
whole-scan sliding window, one box around the body (``--body_tiles box``) and the body mask (default).

The plan is nnU-Net's own (``ExperimentPlanner`` on the CT-ORG-like whole-body fingerprint of
``cpu_network_options.py``: patch 112 x 128 x 128 at 2.5 x 0.81 x 0.81 mm, tile step 0.5). The scan is the
head-to-knee phantom (arms at the sides, exam table; 583 slices of 2 mm, 725 x 725 voxels of 0.8 mm in-plane).
The body is found as the predictor finds it, on a 4 mm copy: the phantom is generated at 4 x 4 x 2 mm (the
predictor samples every second slice of that) and its body region is put on the 0.8 mm grid (5 x 5 voxels per
4 mm voxel). No network runs: the
tile counts are the plan's, the same code the predictor uses. Minutes per scan are the counts times a per-tile
time (``--seconds_per_tile``, default: this 2-core machine's default block of
``benchmarks/results/cpu_network_options_2core.jsonl``, run 1), ESTIMATED, without and with nnU-Net's 8 mirrors.

``--fov_mm D`` gives the scan a circular reconstructed field of view of D mm (the voxels outside it at
-3024 HU, as scanners fill them): a large patient whose arms and flanks the circle cuts. The body of a cut
slice is closed over the cut (``close_cut_slices``), which can only add tiles.

    python benchmarks/body_tiles.py [--seconds_per_tile 8.03] [--seed 3] [--fov_mm 500]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "body_tiles_2core.jsonl"
SPACING_ZYX = (2.0, 0.8, 0.8)
IN_PLANE = 5  # 0.8 mm voxels per 4 mm voxel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds_per_tile", type=float, default=8.03,
                        help="network seconds per tile for the estimate (default 8.03: nnU-Net's CPU path, 2 cores)")
    parser.add_argument("--seed", type=int, default=3, help="phantom seed (default 3)")
    parser.add_argument("--fov_mm", type=float, default=None,
                        help="diameter of a circular field of view that cuts the scan (default: none)")
    parser.add_argument("--no_results", action="store_true", help="do not append the JSON row")
    args = parser.parse_args()
    if args.fov_mm is not None and args.fov_mm <= 0:
        parser.error(f"--fov_mm must be > 0, got {args.fov_mm}")

    sys.path.insert(0, str(REPO / "benchmarks"))
    with tempfile.TemporaryDirectory() as work:
        from cpu_network_options import plan

        plans, _ = plan(Path(work), 8)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ctorg.inference.body_crop import BodyCropSettings, BodyRegion, body_region
    from nnunet_ctorg.inference.case_plan import NetworkGrid, plan_case
    from nnunet_ctorg.inference.slab_resampling import resampling_kind
    from nnunet_ctorg.phantoms import generate_phantom

    cm = PlansManager(plans).get_configuration("3d_fullres")
    predictor = nnUNetPredictor(tile_step_size=0.5, device=__import__("torch").device("cpu"), verbose=False)
    predictor.configuration_manager = cm
    started = time.perf_counter()
    ph = generate_phantom(seed=args.seed, fov="head_knee", spacing=(4.0, 4.0, SPACING_ZYX[0]))
    cut_slices = 0  # slices of the 4 mm phantom where the circle leaves tissue (body or table) out
    if args.fov_mm is not None:
        import numpy as np

        y, x = np.indices(ph.ct.shape[1:], dtype=float)
        outside = (((y + 0.5) * 4.0 - ph.ct.shape[1] * 2.0) ** 2 + ((x + 0.5) * 4.0 - ph.ct.shape[2] * 2.0) ** 2
                   > (args.fov_mm / 2) ** 2)
        cut_slices = int(np.count_nonzero((ph.ct[:, outside] > -300).any(axis=1)))
        ph.ct[:, outside] = -3024
    coarse = body_region(ph.ct, (SPACING_ZYX[0], 4.0, 4.0), 0, 1, BodyCropSettings())
    scale = (1, IN_PLANE, IN_PLANE)
    shape = tuple(n * s for n, s in zip(ph.ct.shape, scale))
    box = tuple(slice(b.start * s, b.stop * s) for b, s in zip(coarse.box, scale))
    body = BodyRegion(coarse.mask, tuple(c * s for c, s in zip(coarse.steps, scale)), shape, box)
    target = [float(s) for s in cm.spacing]
    net = [int(n) for n in compute_new_shape(shape, SPACING_ZYX, target)]
    grid = NetworkGrid([0, 1, 2], [0, 1, 2], 0, [(0, n) for n in shape], list(shape), net, list(SPACING_ZYX), target)
    resampling = resampling_kind(cm.configuration, "probabilities")
    counts = {"nnunet_whole_scan": plan_case(predictor, grid, None, resampling).tiles_run,
              "body_box": plan_case(predictor, grid, box, resampling).tiles_run,
              "body_mask": plan_case(predictor, grid, box, resampling, body).tiles_run}
    seconds = time.perf_counter() - started
    row = {"scan_zyx": list(shape), "fov_mm": args.fov_mm, "slices_with_tissue_outside_fov": cut_slices,
           "spacing_zyx": list(SPACING_ZYX), "patch": list(cm.patch_size),
           "plan_spacing": target, "network_grid": net, "tiles": counts,
           "ratio_whole_to_box": counts["nnunet_whole_scan"] / counts["body_box"],
           "ratio_whole_to_mask": counts["nnunet_whole_scan"] / counts["body_mask"],
           "seconds_per_tile": args.seconds_per_tile,
           "estimated_min_no_mirroring": {k: round(v * args.seconds_per_tile / 60, 1) for k, v in counts.items()},
           "estimated_min_8_mirrors": {k: round(v * 8 * args.seconds_per_tile / 60, 1) for k, v in counts.items()},
           "planning_seconds": round(seconds, 1), "cpus": os.cpu_count()}
    print(f"scan {shape} at {SPACING_ZYX} mm, plan patch {cm.patch_size} at {[round(s, 2) for s in target]} mm, "
          f"network grid {net}" + (f", a {args.fov_mm:g} mm field of view leaves tissue (body or table) "
                                    f"outside it in {cut_slices} of {ph.ct.shape[0]} slices" if args.fov_mm else ""))
    for name, n in counts.items():
        print(f"  {name:18s} {n:5d} tiles  ({counts['nnunet_whole_scan'] / n:.2f}x fewer than nnU-Net)  "
              f"~{n * args.seconds_per_tile / 60:.0f} min without mirroring, "
              f"~{n * 8 * args.seconds_per_tile / 3600:.1f} h with 8 mirrors (estimated)")
    if not args.no_results:
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
