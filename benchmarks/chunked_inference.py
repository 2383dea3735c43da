"""Whole-scan nnU-Net prediction vs chunked vs chunked + body crop: peak RSS, wall time, agreement.

Modes, each in its own process (peak RSS = that process's VmHWM, measured by the OS):
(a) ``whole``: nnU-Net's own ``nnUNetPredictor.predict_single_npy_array`` on the whole scan;
(b) ``chunked``: ``ChunkedPredictor`` (what ``nnunet_ctorg_predict_chunked`` runs) with ``--chunk_mm`` /
    ``--max_ram_gb``, the CT read and the labels written slab by slab as the command does for NIfTI output
    (``NiftiVolume``, ``NiftiLabelWriter``; the peak RSS is taken before the labels are read back to compare);
(c) ``chunked_crop``: (b) with ``--body_crop``;
(d) ``chunked_dicom``: (b) on the same scan written as a DICOM series (one file per slice, written before the
    timing), read slab by slab as the command reads DICOM input;
(e) ``chunked_dicom_seg``: (d), then the labels written as a DICOM SEG (``--output_type dicom_seg``; its time
    is reported apart, the peak RSS covers both);
(f) ``whole_probabilities``: (a) with ``save_or_return_probabilities``, the probabilities saved as nnU-Net's
    export saves them (``np.savez_compressed``), and (g) ``chunked_probabilities``: (b) with
    ``--save_probabilities`` (``ProbabilityWriter``); their largest difference is reported.
Agreement with (a): the fraction of voxels with the same label and the per-label Dice.

Scans: head-to-knee phantoms with a table at 0.8 x 0.8 x 1.5 mm, ``--size`` in-plane (default 525) and
``--lengths`` slices (default 160 320 640; longer ones repeat the phantom), and ``--ct`` files (e.g. the
real CT of ../shared). Model: ``--model FOLDER`` (a trained nnU-Net model, fold 0), or by default the
deterministic stand-in network of tests/inference/standin.py with nnU-Net plans at ``--standin_spacing``
(default 1.5 mm isotropic, patch 64^3, ``--standin_classes`` 4): real nnU-Net preprocessing, sliding
window and export with a fixed convolutional network, so the numbers measure the pipeline, not a model.

    python benchmarks/chunked_inference.py [--lengths 160 320 640 1280] [--ct FILE] [--model FOLDER] \
        [--max_ram_gb 4] [--modes whole chunked chunked_crop]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_phantom(path: Path, n_slices: int, size: int) -> None:
    """A head-to-knee phantom with table, ``size`` x ``size`` x ``n_slices`` at 0.8 x 0.8 x 1.5 mm."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=11, fov="head_knee", spacing=(0.8, 0.8, 1.5))
    ct = ph.ct
    while ct.shape[0] < n_slices:  # longer than the phantom: mirrored copies
        ct = np.concatenate([ct, ct[::-1]], axis=0)
    nz, ny, nx = ct.shape
    z0 = (nz - n_slices) // 2
    out = np.full((n_slices, size, size), -1024, np.int16)
    y0, x0 = (ny - size) // 2, (nx - size) // 2
    src = ct[z0:z0 + n_slices, max(y0, 0):max(y0, 0) + size, max(x0, 0):max(x0, 0) + size]
    oy, ox = max(-y0, 0), max(-x0, 0)
    out[:, oy:oy + src.shape[1], ox:ox + src.shape[2]] = src
    image = sitk.GetImageFromArray(out)
    image.SetSpacing(ph.spacing)
    image.SetDirection(ph.direction)
    sitk.WriteImage(image, str(path))


def write_dicom_series(nifti: Path, folder: Path) -> None:
    """The CT as a DICOM series (int16, one file per slice, the tags the predictor reads)."""
    import locale

    import SimpleITK as sitk

    ct = sitk.Cast(sitk.ReadImage(str(nifti)), sitk.sitkInt16)
    folder.mkdir(parents=True, exist_ok=True)
    d = ct.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.KeepOriginalImageUIDOn()
    current = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the C locale
    try:
        for i in range(ct.GetDepth()):
            image = ct[:, :, i:i + 1]
            position = "\\".join(f"{v:.6f}" for v in ct.TransformIndexToPhysicalPoint((0, 0, i)))
            for key, value in {"0008|0060": "CT", "0020|000e": "1.2.826.0.1.3680043.2.1125.42", "0010|0020": "BENCH",
                               "0020|0011": "1", "0020|0037": orientation, "0020|0032": position,
                               "0020|0013": str(i + 1), "0020|000d": "1.2.826.0.1.3680043.2.1125.43",
                               "0020|0052": "1.2.826.0.1.3680043.2.1125.44"}.items():
                image.SetMetaData(key, value)
            writer.SetFileName(str(folder / f"IM{i:05d}.dcm"))
            writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, current)


def load(args):
    if args.model:
        from nnunet_ctorg.inference.folder_prediction import load_predictor

        return load_predictor(args.model, [0], device=args.device, use_mirroring=False)
    sys.path.insert(0, str(ROOT))
    from tests.inference.standin import standin_plans, standin_predictor

    s = args.standin_spacing
    return standin_predictor(standin_plans(spacing=(s, s, s), patch=(64, 64, 64)), n_classes=args.standin_classes)


def worker(args) -> None:
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ctorg.inference.body_crop import BodyCropSettings
    from nnunet_ctorg.inference.chunk_budgets import peak_rss_gb
    from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
    from nnunet_ctorg.inference.folder_prediction import read_ct_compact

    predictor = load(args)
    chunked = None
    if not args.worker.startswith("whole"):  # as the command: the predictor (and its base RSS) before the case is read
        body = BodyCropSettings() if args.worker == "chunked_crop" else None
        chunk_mm = "auto" if args.chunk_mm == "auto" else (float(args.chunk_mm) or None)
        chunked = ChunkedPredictor(predictor, ChunkSettings(chunk_mm, args.max_ram_gb), body)
    from nnunet_ctorg.inference.folder_prediction import read_ct_lazily

    streamed = args.worker in ("chunked", "chunked_crop", "chunked_dicom", "chunked_probabilities")
    if args.worker.startswith("chunked_dicom"):
        from nnunet_ctorg.inference.dicom_series import find_dicom_series

        (series,) = find_dicom_series(Path(args.dicom_dir)).values()
        image = read_ct_lazily(series, "benchmark")
    elif streamed:
        image = read_ct_lazily(Path(args.ct), "benchmark", Path(args.out).parent)
    else:
        image = read_ct_compact(Path(args.ct), "benchmark")
    t = time.perf_counter()
    info = {}
    if chunked is None:
        from nnunet_ctorg.planning.antialiasing import with_antialiasing

        predictor.configuration_manager = with_antialiasing(predictor.configuration_manager)
        data = sitk.GetArrayFromImage(image).astype(np.float32)[None]
        labels = predictor.predict_single_npy_array(data, {"spacing": list(image.GetSpacing()[::-1])}, None, None,
                                                    args.worker == "whole_probabilities")
        del data
        if args.worker == "whole_probabilities":
            labels, probabilities = labels
            np.savez_compressed(args.out + ".npz", probabilities=probabilities)
            del probabilities
    elif streamed and not getattr(image, "in_memory", True):
        from nnunet_ctorg.inference.nifti_slabs import NiftiLabelWriter
        from nnunet_ctorg.inference.probability_export import ProbabilityWriter, nnunet_properties

        writer = NiftiLabelWriter(args.out + ".nii.gz", image.GetSize()[::-1], chunked.label_dtype,
                                  image.GetOrigin(), image.GetSpacing(), image.GetDirection())
        probabilities = None
        if args.worker == "chunked_probabilities":
            probabilities = ProbabilityWriter(args.out, predictor.label_manager.num_segmentation_heads,
                                              image.GetSize()[::-1])
        chunked.predict_image(image, out=writer, probabilities=probabilities)
        writer.close()
        if probabilities is not None:
            probabilities.close(nnunet_properties(image, chunked.last_properties))
    else:
        labels = chunked.predict_image(image)
    if chunked is not None:
        info = {"chunks": len(chunked.last_chunks), "base_rss_gb": chunked.base_gb, "streamed": streamed,
                "estimate_gb": getattr(chunked, "last_estimate_gb", None), "tiles_run": chunked.last_tiles}
    seconds = time.perf_counter() - t
    peak = peak_rss_gb()  # before the streamed labels are read back for the comparison
    if hasattr(image, "close"):
        image.close()
    if streamed and not getattr(image, "in_memory", True):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(args.out + ".nii.gz"))
    if args.worker == "chunked_dicom_seg":
        from nnunet_ctorg.inference.dicom_seg import write_dicom_seg

        t = time.perf_counter()
        write_dicom_seg(labels, series.files, predictor.dataset_json["labels"], Path(args.out + ".dcm"), "benchmark")
        info["seg_seconds"] = time.perf_counter() - t
        peak = peak_rss_gb()
        info["seg_mb"] = Path(args.out + ".dcm").stat().st_size / 1e6
    np.save(args.out, labels)
    print(json.dumps({"mode": args.worker, "seconds": seconds, "peak_rss_gb": peak, **info}))


def dice_per_label(a, b) -> dict:
    import numpy as np

    out = {}
    for lab in np.union1d(np.unique(a), np.unique(b)):
        if lab == 0:
            continue
        x, y = a == lab, b == lab
        out[int(lab)] = float(2 * np.count_nonzero(x & y) / (x.sum() + y.sum()))
    return out


def run_scan(ct: str, args, tmp: Path) -> dict:
    import numpy as np

    results, segs = {}, {}
    for mode in args.modes:
        out = str(tmp / f"{mode}.npy")
        cmd = [sys.executable, __file__, "--worker", mode, "--ct", ct, "--out", out, "--device", args.device,
               "--chunk_mm", str(args.chunk_mm), "--standin_spacing", str(args.standin_spacing),
               "--standin_classes", str(args.standin_classes)]
        if args.model:
            cmd += ["--model", args.model]
        if mode.startswith("chunked_dicom"):
            cmd += ["--dicom_dir", str(tmp / f"{Path(ct).name}.dicom")]
        if args.max_ram_gb:
            cmd += ["--max_ram_gb", str(args.max_ram_gb)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            results[mode] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
            print(f"  {mode}: {results[mode]['error']}", flush=True)
            continue
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        segs[mode] = np.load(out)
        print(f"  {json.dumps(results[mode])}", flush=True)
    if "whole" in segs:
        for mode in segs:
            if mode == "whole":
                continue
            r = results[mode]
            r["same_label_fraction"] = float(np.mean(segs[mode] == segs["whole"]))
            r["dice_vs_whole"] = dice_per_label(segs[mode], segs["whole"])
            r["min_dice_vs_whole"] = min(r["dice_vs_whole"].values(), default=1.0)
            r["rss_ratio"] = r["peak_rss_gb"] / results["whole"]["peak_rss_gb"]
            r["time_ratio"] = r["seconds"] / results["whole"]["seconds"]
    if "whole_probabilities" in segs and "chunked_probabilities" in segs:
        difference = 0.0
        with np.load(tmp / "whole_probabilities.npy.npz") as a, np.load(tmp / "chunked_probabilities.npy.npz") as b:
            pa, pb = a["probabilities"], b["probabilities"]
            for c in range(pa.shape[0]):
                difference = max(difference, float(np.abs(pa[c] - pb[c]).max()))
        r = results["chunked_probabilities"]
        r["max_probability_difference"] = difference
        r["same_label_fraction"] = float(np.mean(segs["chunked_probabilities"] == segs["whole_probabilities"]))
        r["dice_vs_whole"] = dice_per_label(segs["chunked_probabilities"], segs["whole_probabilities"])
        r["min_dice_vs_whole"] = min(r["dice_vs_whole"].values(), default=1.0)
        r["rss_ratio"] = r["peak_rss_gb"] / results["whole_probabilities"]["peak_rss_gb"]
        r["time_ratio"] = r["seconds"] / results["whole_probabilities"]["seconds"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", nargs="*", default=[], help="CT files to run besides the phantoms")
    parser.add_argument("--lengths", nargs="*", type=int, default=[160, 320, 640],
                        help="phantom lengths in slices (0.8 x 0.8 x 1.5 mm)")
    parser.add_argument("--size", type=int, default=525, help="phantom in-plane size (default 525)")
    parser.add_argument("--model", default=None, help="trained nnU-Net model folder (default: the stand-in)")
    parser.add_argument("--standin_spacing", type=float, default=1.5)
    parser.add_argument("--standin_classes", type=int, default=4, help="classes of the stand-in network")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk_mm", default="auto", help="mm, 'auto' (the command's default) or 0")
    parser.add_argument("--max_ram_gb", type=float, default=None)
    parser.add_argument("--modes", nargs="+", default=["whole", "chunked", "chunked_crop"])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dicom_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.ct = args.ct[0]
        return worker(args)

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scans = [(f"phantom {args.size}x{args.size}x{n}", str(tmp / f"phantom_{n}.nii.gz"), n) for n in args.lengths]
        scans += [(Path(c).name, c, None) for c in args.ct]
        for name, path, n in scans:
            if n is not None:
                make_phantom(Path(path), n, args.size)
            if any(m.startswith("chunked_dicom") for m in args.modes):
                write_dicom_series(Path(path), tmp / f"{Path(path).name}.dicom")
            print(name, flush=True)
            results = run_scan(path, args, tmp)
            table.append((name, results))
    print("\n| scan | mode | s | peak RSS GB | RSS ratio | time ratio | same labels | min Dice vs whole | chunks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, results in table:
        for mode, r in results.items():
            if "error" in r:
                print(f"| {name} | {mode} | error: {r['error']} | | | | | | |")
                continue
            ratio = (f"{r['rss_ratio']:.2f} | {r['time_ratio']:.2f} | {r['same_label_fraction']:.6f} | "
                     f"{r['min_dice_vs_whole']:.4f}") if "rss_ratio" in r else " | | | "
            extra = (f" (max prob. difference {r['max_probability_difference']:.1e})"
                     if "max_probability_difference" in r else "")
            print(f"| {name} | {mode} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | {ratio} | "
                  f"{r.get('chunks', '')}{extra} |")


if __name__ == "__main__":
    main()
