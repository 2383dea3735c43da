"""Console scripts: ``nnunet_ctorg_predict_chunked``, ``nnunet_ctorg_crop_body`` and ``nnunet_ctorg_uncrop_body``."""

import argparse
import sys
from pathlib import Path


def predict_chunked_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnunet_ctorg_predict_chunked",
        description="Segment CTs of any length within a RAM budget with a trained nnU-Net model, with the labels "
                    "nnUNetv2_predict gives inside the body (everywhere with --no_body_crop). Each CT is processed "
                    "in chunks along its cranio-caudal axis: nnU-Net's preprocessing and resampling at the whole "
                    "scan's sample positions, nnU-Net's sliding-window tile grid of the whole scan run in chunks of "
                    "tile rows (sums carried between chunks), TTA and folds as nnU-Net; no whole-scan float array "
                    "is allocated. Flags follow nnUNetv2_predict.")
    parser.add_argument("-i", required=True, help="input folder of CTs with the model's file_ending (CASE_0000.nii.gz "
                        "as nnU-Net, or CASE.nii.gz; both for one case is an error), or, if it has none, of DICOM "
                        "CT series (a sub-folder per series, or mixed: case = sub-folder or PatientID_SeriesNumber)")
    parser.add_argument("-o", required=True, help="output folder (CASE<file_ending>, dataset.json, plans.json, "
                        "summary)")
    parser.add_argument("-d", default=None, help="dataset name or id of the trained model (with -tr -p -c)")
    parser.add_argument("-m", default=None, help="model folder instead of -d/-tr/-p/-c (the folder with fold_X)")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds to ensemble (default 0 1 2 3 4; 'all' for a model trained on all data)")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class name (default nnUNetTrainer)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name (default "
                        "checkpoint_final.pth)")
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"],
                        help="device to predict on (default cuda; cpu works, slowly)")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch "
                        "(default 0.5, as nnU-Net)")
    parser.add_argument("-npp", type=int, default=1, help="accepted for nnUNetv2_predict compatibility; chunks are "
                        "preprocessed in this process, one at a time, to bound RAM")
    parser.add_argument("-nps", type=int, default=1, help="accepted for nnUNetv2_predict compatibility; chunks are "
                        "exported in this process, one at a time, to bound RAM")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (faster)")
    parser.add_argument("--continue_prediction", action="store_true", help="skip cases whose output exists")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write CASE.npz (class probabilities, float32) and CASE.pkl as nnUNetv2_predict "
                             "does; written slab by slab through a temporary file in the output folder that needs "
                             "4 bytes x classes x voxels of disk")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (default 1)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this process predicts (0..num_parts-1)")
    parser.add_argument("--chunk_mm", type=float, default=None,
                        help="chunk length along the cranio-caudal axis in mm of the network grid, rounded to whole "
                             "rows of sliding-window tiles (default 300, or less if --max_ram_gb needs it); 0 = from "
                             "--max_ram_gb alone, or the whole scan. The labels do not depend on it")
    parser.add_argument("--max_ram_gb", type=float, default=None,
                        help="RAM budget: the chunk length is chosen so that the estimated peak (model, CT, labels, "
                             "chunk) stays below it; an error saying how much is needed if even one row of tiles "
                             "does not fit")
    parser.add_argument("--max_gpu_gb", type=float, default=None,
                        help="-device cuda: GPU memory budget of the process (model included); chunks are shortened "
                             "so that their logit sums, input and a tile's activations fit, and where one row of "
                             "tiles does not, the sums stay on the CPU while the network runs on the GPU. Default: "
                             "90 %% of the GPU memory free when a case starts")
    crop = parser.add_mutually_exclusive_group()
    crop.add_argument("--body_crop", dest="body_crop", action="store_true", default=True,
                      help="(default) run only the tiles the body needs: its mask is found once on a 4 mm copy of "
                           "the scan and widened by --body_margin_mm (table, blankets and air stay out); inside "
                           "it the labels are exactly nnUNetv2_predict's, outside it background. A scan without "
                           "a body (too little deep soft tissue) is predicted whole, with a warning")
    crop.add_argument("--no_body_crop", dest="body_crop", action="store_false",
                      help="run every tile of the scan, as nnUNetv2_predict: its labels everywhere, table and air "
                           "included (about twice the network time of a whole-body CT)")
    parser.add_argument("--body_margin_mm", type=float, default=10.0, help="margin around the body in mm (default 10)")
    parser.add_argument("--body_tiles", choices=["mask", "box"], default="mask",
                        help="with the body crop: run the tiles a voxel of the body mask needs (default), or all "
                             "those of one box around it (more tiles; nnU-Net's labels in the whole box, e.g. "
                             "between the legs and beside the neck)")
    parser.add_argument("--cpu_bf16", action="store_true",
                        help="-device cpu: run the network in bfloat16 (torch.autocast) where the CPU has bf16 "
                             "instructions (AVX512-BF16, AMX): ~2.2x faster per tile on a 2-core Xeon, but the labels "
                             "are not exactly nnU-Net's (float32); benchmarks/cpu_whole_body.py measures the "
                             "agreement. Off by default")
    parser.add_argument("--cpu_openvino", action="store_true",
                        help="-device cpu: run the network compiled by OpenVINO in float32 (pip install "
                             "'nnunet-ctorg[openvino]'; each fold converted once per run, ~15 s for nnU-Net's "
                             "default network): faster than PyTorch on the CPU, logits within ~1e-3, so a voxel "
                             "where two classes nearly tie can differ from nnU-Net's label; "
                             "benchmarks/cpu_whole_body.py measures the agreement. Off by default")
    parser.add_argument("--postprocess", action="store_true",
                        help="organ-aware cleanup of the labels (nnunet_ctorg_postprocess's default rules)")
    parser.add_argument("--preview", action="store_true", help="also write previews/CASE.png")
    parser.add_argument("--output_type", choices=["nifti", "dicom_seg", "both"], default="nifti",
                        help="nifti (default): CASE<file_ending>; dicom_seg: CASE.dcm, a DICOM Segmentation with one "
                             "segment per organ that references the input series (DICOM input only); both")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from nnunet_ctorg.inference.body_crop import BodyCropSettings
    from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
    from nnunet_ctorg.inference.folder_prediction import load_predictor, predict_folder

    try:
        if args.m is None and args.d is None:
            raise ValueError("give the model with -d (and -tr -p -c) or with -m MODEL_FOLDER")
        if not 0 <= args.part_id < args.num_parts:
            raise ValueError(f"-part_id must be in 0..{args.num_parts - 1}, got {args.part_id}")
        if args.m is not None:
            model = Path(args.m)
        else:
            from nnunetv2.utilities.file_path_utilities import get_output_folder

            model = Path(get_output_folder(args.d, args.tr, args.p, args.c))
        chunk_mm = "auto" if args.chunk_mm is None else (args.chunk_mm or None)
        chunks = ChunkSettings(chunk_mm=chunk_mm, max_ram_gb=args.max_ram_gb, max_gpu_gb=args.max_gpu_gb)
        body = BodyCropSettings(margin_mm=args.body_margin_mm, skip_tiles_outside_mask=args.body_tiles == "mask") \
            if args.body_crop else None
        folds = None if args.f == ["auto"] else args.f
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("-device cuda: no CUDA device is available here; use -device cpu")
        if args.cpu_bf16 and args.cpu_openvino:  # these before the checkpoints load
            raise ValueError("--cpu_bf16 and --cpu_openvino exclude each other (OpenVINO runs in float32 here)")
        if args.cpu_bf16:
            from nnunet_ctorg.inference.chunk_steps import check_cpu_bf16

            check_cpu_bf16(args.device)
        if args.cpu_openvino:
            from nnunet_ctorg.inference.openvino_network import check_cpu_openvino

            check_cpu_openvino(args.device)
        predictor = load_predictor(model, folds, args.chk, args.device, not args.disable_tta, args.step_size)
        chunked = ChunkedPredictor(predictor, chunks, body, cpu_bf16=args.cpu_bf16, cpu_openvino=args.cpu_openvino)
        summary = predict_folder(chunked, args.i, args.o, args.continue_prediction,
                                 args.num_parts, args.part_id, postprocess=args.postprocess, previews=args.preview,
                                 progress=not args.quiet, output_type=args.output_type,
                                 save_probabilities=args.save_probabilities)
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_predict_chunked: error: {e}")
    print(f"{len(summary['predicted'])} predicted, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed; "
          f"peak RSS {summary['peak_rss_gb']:.2f} GB")
    for name, error in summary["failed"].items():
        print(f"  {name}: {error}", file=sys.stderr)
    if summary["failed"]:
        sys.exit(1)


def _body_settings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--margin_mm", type=float, default=10.0, help="margin around the body in mm (default 10)")
    parser.add_argument("--low_hu", type=float, default=-300.0, help="lower HU of the body threshold (default -300)")
    parser.add_argument("--high_hu", type=float, default=2000.0, help="upper HU of the body threshold (default 2000)")
    parser.add_argument("--min_island_mm2", type=float, default=100.0,
                        help="per slice, parts smaller than this are dropped (tubes, cables; default 100 mm²)")


def _crop_one(item: tuple[Path, Path], settings, on_empty: str) -> tuple[str, str | None]:
    from nnunet_ctorg.inference.body_crop import crop_image_to_body
    from nnunet_ctorg.io import copy_file_atomic, read_ct, write_image_atomic

    src, dst = item
    try:
        image = read_ct(src, src.name)
        try:
            cropped, _ = crop_image_to_body(image, settings, src.name)
        except ValueError as e:
            if on_empty == "error" or "no body found" not in str(e):
                raise
            if on_empty == "copy":
                copy_file_atomic(src, dst)
                return src.name, f"warning: {e}; copied uncropped"
            return src.name, f"warning: {e}; skipped"
        write_image_atomic(cropped, dst)
    except (ValueError, OSError) as e:
        return src.name, str(e)
    return src.name, None


def crop_body_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnunet_ctorg_crop_body",
        description="Crop every CT of a folder to its body contour (per-slice threshold, hole filling, removal of "
                    "small islands, largest 3-D component plus arms beside it) plus a margin. The crops keep their "
                    "physical position, so nnunet_ctorg_uncrop_body puts segmentations of them back exactly. "
                    "Re-running skips finished files.")
    parser.add_argument("-i", required=True, help="input folder of CTs")
    parser.add_argument("-o", required=True, help="output folder (same file names)")
    _body_settings_args(parser)
    parser.add_argument("--on_empty", choices=["error", "copy", "skip"], default="error",
                        help="when no body is found: fail the case (default), copy it uncropped with a warning, "
                             "or skip it with a warning")
    parser.add_argument("-np", type=int, default=1, help="parallel processes (default 1)")
    args = parser.parse_args(argv)

    from functools import partial

    from nnunet_ctorg.inference.body_crop import BodyCropSettings
    from nnunet_ctorg.io import list_images
    from nnunet_ctorg.parallel import map_with_progress

    try:
        settings = BodyCropSettings(args.low_hu, args.high_hu, args.min_island_mm2, margin_mm=args.margin_mm)
        files = list_images(args.i)
        if not files:
            raise ValueError(f"no CT files in {args.i}")
        todo = [(p, Path(args.o) / p.name) for p in files if not (Path(args.o) / p.name).is_file()]
        failed = 0
        for name, message in map_with_progress(partial(_crop_one, settings=settings, on_empty=args.on_empty), todo,
                                               args.np, "crop", "CT"):
            if message:
                print(f"  {name}: {message}", file=sys.stderr)
                failed += not message.startswith("warning")
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_crop_body: error: {e}")
    print(f"{len(todo) - failed} cropped or handled, {len(files) - len(todo)} skipped (done before), {failed} failed")
    if failed:
        sys.exit(1)


def uncrop_body_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnunet_ctorg_uncrop_body",
        description="Put segmentations of body-cropped CTs back into the grid of the original CTs (outside the crop "
                    "= background). Files are paired by case name (CASE.nii.gz with CASE_0000.nii.gz or CASE.nii.gz).")
    parser.add_argument("-i", required=True, help="folder of segmentations of the cropped CTs")
    parser.add_argument("-ref", required=True, help="folder of the original (uncropped) CTs")
    parser.add_argument("-o", required=True, help="output folder")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from nnunet_ctorg.evaluation.previews import find_ct
    from nnunet_ctorg.inference.body_crop import uncrop_image
    from nnunet_ctorg.io import case_name, list_images, read_image, write_image_atomic

    try:
        segs = list_images(args.i)
        for seg_path in tqdm(segs, desc="uncrop", unit="case"):
            case = case_name(seg_path)
            reference = read_image(find_ct(Path(args.ref), case), f"{case}: CT")
            try:
                out = uncrop_image(read_image(seg_path, f"{case}: segmentation"), reference)
            except ValueError as e:
                raise ValueError(f"{case}: {e}") from None
            write_image_atomic(out, Path(args.o) / seg_path.name)
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_uncrop_body: error: {e}")
