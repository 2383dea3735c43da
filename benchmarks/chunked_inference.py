"""Whole-image nnU-Net prediction vs chunked vs chunked + body crop: peak RSS, wall time, Dice agreement.

(a) ``nnUNetPredictor.predict_from_files_sequential`` on the whole image (nnU-Net's own path, one
    process, no workers);
(b) ``nnunet_ctorg_predict_chunked`` logic, chunks of ``--chunk_mm`` with ``--overlap_mm`` blended;
(c) (b) with ``--body_crop``.
Each runs in its own process; peak RSS is that process's VmHWM (measured by the OS). Agreement is the
per-organ Dice between (b)/(c) and (a). ``--noise_floor`` also predicts (a) on the scan minus its top
slice: the agreement of the model with itself when only the sliding-window tiling moves, which bounds
what any chunking can reach with that model.

Default input: a head-to-knee phantom cropped to 512 x 512 x 600 at 0.8 x 0.8 x 1.5 mm with the
table; ``--ct`` takes any CT (e.g. ../shared/data/real_ct/example_ct.nii.gz). The model defaults to
the one the README demo trains.

    python benchmarks/chunked_inference.py [--ct FILE] [--model FOLDER] [--device cpu] [--noise_floor]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_MODEL = ("nnunet_ctorg_demo/nnUNet_results/Dataset601_CTORGPhantom/"
              "CTOrgIOUTrainer_demo__nnUNetPlans_demo__3d_cpu_demo")


def make_phantom(path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=11, fov="head_knee", spacing=(0.8, 0.8, 1.5))
    nz, ny, nx = ph.ct.shape
    z0 = max((nz - 600) // 2, 0)
    y0, x0 = max((ny - 512) // 2, 0), max((nx - 512) // 2, 0)
    box = (slice(z0, z0 + 600), slice(y0, y0 + 512), slice(x0, x0 + 512))
    image = sitk.GetImageFromArray(np.ascontiguousarray(ph.ct[box]))
    image.SetSpacing(ph.spacing)
    image.SetDirection(ph.direction)
    full = ph.to_sitk(ph.ct)
    image.SetOrigin(full.TransformIndexToPhysicalPoint([x0, y0, z0]))
    sitk.WriteImage(image, str(path))


def worker(args) -> None:
    import SimpleITK as sitk

    from nnunet_ctorg.inference.body_crop import BodyCropSettings
    from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings, load_predictor, peak_rss_gb
    from nnunet_ctorg.io import write_image_atomic

    predictor = load_predictor(args.model, [0], device=args.device, use_mirroring=False)
    t = time.perf_counter()
    if args.worker in ("whole", "whole_minus_one"):
        ct = args.ct
        if args.worker == "whole_minus_one":
            image = sitk.ReadImage(ct)
            n = image.GetSize()[2]
            ct = str(Path(args.out).with_name("minus_one_0000.nii.gz"))
            sitk.WriteImage(image[:, :, : n - 1], ct)
            t = time.perf_counter()
        predictor.predict_from_files_sequential([[ct]], [args.out[: -len(".nii.gz")]], save_probabilities=False,
                                                overwrite=True)
    else:
        body = BodyCropSettings() if args.worker == "chunked_crop" else None
        chunk_mm = args.chunk_mm if args.chunk_mm == "auto" else float(args.chunk_mm)
        chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm, args.overlap_mm, args.max_ram_gb), body)
        print(json.dumps({"layout": chunked.layout_for(sitk.ReadImage(args.ct))[1]}), file=sys.stderr)
        image = sitk.ReadImage(args.ct)
        labels = chunked.predict_image(image)
        seg = sitk.GetImageFromArray(labels)
        seg.CopyInformation(image)
        write_image_atomic(seg, args.out)
    print(json.dumps({"mode": args.worker, "seconds": time.perf_counter() - t, "peak_rss_gb": peak_rss_gb()}))


def dice_per_label(a, b, labels) -> dict:
    import numpy as np

    out = {}
    for name, lab in labels.items():
        if lab == 0:
            continue
        x, y = a == lab, b == lab
        total = int(x.sum() + y.sum())
        if total:
            out[name] = float(2 * np.count_nonzero(x & y) / total)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", default=None, help="CT file (default: the 512 x 512 x 600 phantom)")
    parser.add_argument("--model", default=DEMO_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk_mm", default="auto", help="mm, or 'auto' (the predict command's default)")
    parser.add_argument("--overlap_mm", type=float, default=50.0)
    parser.add_argument("--max_ram_gb", type=float, default=None)
    parser.add_argument("--noise_floor", action="store_true")
    parser.add_argument("--modes", nargs="+", default=["whole", "chunked", "chunked_crop"])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import numpy as np
    import SimpleITK as sitk

    if not Path(args.model, "fold_0").is_dir():
        sys.exit(f"no trained model in {args.model}: run the README demo first, or pass --model")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ct = args.ct
        if ct is None:
            ct = str(tmp / "phantom_0000.nii.gz")
            make_phantom(Path(ct))
        image = sitk.ReadImage(ct)
        print(f"CT {ct}: size {image.GetSize()}, spacing {tuple(round(s, 3) for s in image.GetSpacing())}")
        labels = json.loads(Path(args.model, "dataset.json").read_text())["labels"]
        modes = args.modes + (["whole_minus_one"] if args.noise_floor else [])
        results, segs = {}, {}
        for mode in modes:
            out = str(tmp / f"{mode}.nii.gz")
            cmd = [sys.executable, __file__, "--worker", mode, "--ct", ct, "--out", out, "--model", args.model,
                   "--device", args.device, "--chunk_mm", str(args.chunk_mm), "--overlap_mm", str(args.overlap_mm)]
            if args.max_ram_gb:
                cmd += ["--max_ram_gb", str(args.max_ram_gb)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[mode]["process_wall_s"] = time.perf_counter() - t
            segs[mode] = sitk.GetArrayFromImage(sitk.ReadImage(out))
            print(json.dumps(results[mode]), flush=True)
        if "whole" in segs:
            for mode in modes:
                if mode == "whole":
                    continue
                ref = segs["whole"][:-1] if mode == "whole_minus_one" else segs["whole"]
                agreement = dice_per_label(segs[mode], ref, labels)
                results[mode]["dice_vs_whole"] = agreement
                results[mode]["mean_dice_vs_whole"] = float(np.mean(list(agreement.values())))
                results[mode]["rss_ratio"] = results[mode]["peak_rss_gb"] / results["whole"]["peak_rss_gb"]
                results[mode]["time_ratio"] = results[mode]["seconds"] / results["whole"]["seconds"]
        print(json.dumps(results, indent=2))
        for mode, r in results.items():
            extra = ""
            if "rss_ratio" in r:
                extra = (f"  RSS ratio {r['rss_ratio']:.2f}, time ratio {r['time_ratio']:.2f}, "
                         f"mean Dice vs whole {r['mean_dice_vs_whole']:.4f}")
            print(f"{mode:16s} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_gb']:.2f} GB{extra}")


if __name__ == "__main__":
    main()
