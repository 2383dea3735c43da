"""Whole-body CT on the CPU with nnU-Net's real-size 3d_fullres network: ``nnUNetv2_predict_from_modelfolder
-device cpu`` against ``nnunet_ctorg_predict_chunked --body_crop`` (its default; and with ``--cpu_bf16`` or
``--cpu_openvino``) on the same scan, in one run.

The model is nnU-Net's own plan and architecture for a CT-ORG-like whole-body dataset (``cpu_network_options.py``:
``ExperimentPlanner``, patch 112 x 128 x 128 at 2.5 x 0.81 x 0.81 mm, 8 classes, 31 M parameters) with random
weights (seeded), saved as a model folder (``fold_0/checkpoint_final.pth``) that both commands load. The scan is
the head-to-knee phantom with arms and table (seed 3: 582 slices of 2 mm, 725 x 725 voxels of 0.8 mm); a slab of
it (``--slices N``, centred on the liver) keeps a run within what a 2-core machine does in half an hour.

Each command runs in its own process as a user runs it (nnU-Net's defaults, ``--disable_tta`` for both: mirroring
multiplies both network times by 8). Measured per command: wall time (process start to exit), peak RSS of the
process tree (``/proc``, every 0.2 s; nnU-Net's worker processes included; summed RSS counts shared pages once
per process, so PSS is printed too), tiles run (calls of nnU-Net's
``_internal_maybe_mirror_and_predict``), time in the network (those calls), and the rest: for nnU-Net, before its
sliding window (imports, model, reading, preprocessing) and after it (resampling to the original grid, export);
for ours, time in chunk preprocessing (``network_input``) and slice export (``SliceExport``). Labels: the share of
body voxels (the predictor's body mask) with nnU-Net's label, per class.

The whole scan's tile counts come from the plan (no network); the whole-scan minutes are ESTIMATED from the
measured per-tile network time and per-slice rest.

    python benchmarks/cpu_whole_body.py --slices 140 [--max_ram_gb 8] [--seed 3] [--in_plane N]

Random weights say nothing about how often bfloat16 or OpenVINO flips a trained model's label (their logits are
near ties everywhere); ``--trained_model MODEL --images CT ... [--fast_path cpu_openvino]`` compares a trained
model's PyTorch float32 labels (nnU-Net's) and those of the fast path per class instead (e.g. the demo's model,
``nnunet_ctorg_demo``).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODES = ("ours", "ours_bf16", "ours_openvino", "ours_all_tiles", "nnunet")
# our command's flags per mode: its default crops to the body; ours_all_tiles runs every tile, as nnU-Net
FAST_FLAGS = {"ours": [], "ours_bf16": ["--cpu_bf16"], "ours_openvino": ["--cpu_openvino"],
              "ours_all_tiles": ["--no_body_crop"]}
RESULTS = REPO / "benchmarks" / "results" / "cpu_whole_body_2core.jsonl"
SPACING_XYZ = (0.8, 0.8, 2.0)


def tree_memory_bytes(root: int) -> tuple[int, int]:
    """Resident memory (RSS) and proportional set size (PSS: a page shared by n processes counts 1/n) of ``root``
    and all its descendants, from /proc. Summed RSS counts pages the processes share (libraries, fork
    copy-on-write) once per process; summed PSS counts them once."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            pass
    return rss, pss


def run_measured(cmd: list[str], env: dict) -> dict:
    """Wall time and peak process-tree RSS and PSS of ``cmd``."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    peak = [0, 0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[:] = [max(a, b) for a, b in zip(peak, tree_memory_bytes(proc.pid))]
            done.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rc = proc.wait()
    done.set()
    poller.join()
    if rc != 0:
        raise SystemExit(f"{cmd[2:4]} failed with exit status {rc}")
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_rss_gb": round(peak[0] / 1e9, 2),
            "peak_pss_gb": round(peak[1] / 1e9, 2)}


def make_inputs(work: Path, args) -> tuple[Path, Path, dict]:
    """The model folder (nnU-Net's plan, random weights), the input folder with the scan, and its shapes."""
    import SimpleITK as sitk
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpu_network_options import build_network, plan

    plans, dataset_json = plan(work / "planning", 8)
    net, _, cm = build_network(plans, dataset_json, args.seed)
    model = work / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans, indent=1))
    (model / "dataset.json").write_text(json.dumps({k: v for k, v in dataset_json.items() if k != "dataset"}))
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               model / "fold_0" / "checkpoint_final.pth")
    del net

    from nnunet_ctorg.phantoms import generate_phantom
    from nnunet_ctorg.phantoms.anatomy import STRUCTURE_IDS

    ph = generate_phantom(seed=args.seed, fov="head_knee", spacing=SPACING_XYZ)
    ct = ph.ct
    if args.slices:
        centre = int(round(np.nonzero((ph.structures == STRUCTURE_IDS["liver"]).any((1, 2)))[0].mean()))
        lo = max(0, min(centre - args.slices // 2, ct.shape[0] - args.slices))
        ct = ct[lo:lo + args.slices]
    if args.in_plane:
        y0, x0 = ((n - args.in_plane) // 2 for n in ct.shape[1:])
        ct = ct[:, y0:y0 + args.in_plane, x0:x0 + args.in_plane]
    images = work / "input"
    images.mkdir()
    image = sitk.GetImageFromArray(np.ascontiguousarray(ct))
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, str(images / "case_0000.nii.gz"))
    return model, images, {"full_scan_zyx": list(ph.ct.shape), "scan_zyx": list(ct.shape)}


def child(mode: str, work: Path, max_ram_gb: float) -> None:
    """Run one command in this process with timers around nnU-Net's tile call and our preprocessing/export."""
    t0 = time.perf_counter()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    spans: dict[str, float] = {"network_s": 0.0, "preprocessing_s": 0.0, "export_s": 0.0}
    marks: dict[str, float] = {}
    calls = [0]

    def timed(owner, name: str, key: str) -> None:
        original = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                spans[key] += time.perf_counter() - t
                if key == "network_s":
                    calls[0] += 1
        setattr(owner, name, wrapper)

    timed(nnUNetPredictor, "_internal_maybe_mirror_and_predict", "network_s")
    out = work / f"out_{mode}"
    if mode == "nnunet":
        from nnunetv2.inference import predict_from_raw_data as nn

        original = nnUNetPredictor.predict_logits_from_preprocessed_data

        def window(self, data):
            marks.setdefault("window_start", time.perf_counter())
            try:
                return original(self, data)
            finally:
                marks["window_end"] = time.perf_counter()
        nnUNetPredictor.predict_logits_from_preprocessed_data = window
        sys.argv = ["nnUNetv2_predict_from_modelfolder", "-i", str(work / "input"), "-o", str(out), "-m",
                    str(work / "model"), "-f", "0", "-device", "cpu", "--disable_tta"]
        nn.predict_entry_point_modelfolder()
    else:
        from nnunet_ctorg.inference import chunk_steps, chunked_predictor
        from nnunet_ctorg.inference.cli import predict_chunked_main

        timed(chunked_predictor, "network_input", "preprocessing_s")
        timed(chunk_steps.SliceExport, "add_complete", "export_s")
        timed(chunk_steps.SliceExport, "export_ready", "export_s")
        predict_chunked_main(["-i", str(work / "input"), "-o", str(out), "-m", str(work / "model"), "-f", "0",
                              "-device", "cpu", "--disable_tta", "--max_ram_gb", str(max_ram_gb),
                              "--quiet", *FAST_FLAGS[mode]])
    end = time.perf_counter()
    row = {"tiles_run": calls[0], **{k: round(v, 1) for k, v in spans.items()}, "in_process_s": round(end - t0, 1)}
    if mode == "nnunet":
        row.update(before_window_s=round(marks["window_start"] - t0, 1),
                   window_other_s=round(marks["window_end"] - marks["window_start"] - spans["network_s"], 1),
                   after_window_s=round(end - marks["window_end"], 1))
        del row["preprocessing_s"], row["export_s"]
    (work / f"timing_{mode}.json").write_text(json.dumps(row))


def agreement(work: Path, mode: str) -> dict:
    """Per class: body voxels nnU-Net labels with it, and the share of those we label the same; overall share."""
    import SimpleITK as sitk

    from nnunet_ctorg.inference.body_crop import BodyCropSettings, body_region

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "input" / "case_0000.nii.gz")))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out_nnunet" / "case.nii.gz")))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"out_{mode}" / "case.nii.gz")))
    body = body_region(ct, SPACING_XYZ[::-1], 0, 1, BodyCropSettings())
    inside = body.region(tuple(slice(0, n) for n in ct.shape))
    same = (ref == ours) & inside
    per_class = {int(c): {"voxels": int(((ref == c) & inside).sum()),
                          "equal_pct": round(100.0 * float((same & (ref == c)).sum()) /
                                             max(1, int(((ref == c) & inside).sum())), 4)}
                 for c in np.unique(ref[inside])}
    return {"body_voxels": int(inside.sum()), "body_equal_pct": round(100.0 * float(same.sum()) / int(inside.sum()), 4),
            "per_class": per_class, "outside_body_ours_background": bool((ours[~inside] == 0).all())}


def trained_agreement(model: Path, images: list[Path], fold: str, fast_path: str) -> dict:
    """Labels of a trained model with ``fast_path`` (``cpu_bf16``, ``cpu_openvino``) against its PyTorch float32
    labels (nnU-Net's), per class."""
    import SimpleITK as sitk

    from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
    from nnunet_ctorg.inference.folder_prediction import load_predictor

    predictor = load_predictor(model, [fold], use_mirroring=False)
    exact = ChunkedPredictor(predictor, ChunkSettings())
    fast = ChunkedPredictor(predictor, ChunkSettings(), **{fast_path: True})
    names = predictor.dataset_json["labels"]
    voxels: dict[int, int] = {}
    equal: dict[int, int] = {}
    for path in images:
        image = sitk.ReadImage(str(path))
        a, b = exact.predict_image(image), fast.predict_image(image)
        print(f"  {path.name}: {100.0 * float(np.mean(a == b)):.4f} % of voxels equal", flush=True)
        for c in np.unique(a):
            voxels[int(c)] = voxels.get(int(c), 0) + int((a == c).sum())
            equal[int(c)] = equal.get(int(c), 0) + int(((a == c) & (b == c)).sum())
    by_id = {v: k for k, v in names.items()}
    per_class = {by_id.get(c, str(c)): {"voxels": n, "equal_pct": round(100.0 * equal[c] / n, 4)}
                 for c, n in sorted(voxels.items())}
    return {"model": str(model), "fold": fold, "fast_path": fast_path, "images": [p.name for p in images],
            "per_class": per_class,
            "all_classes_at_least_99_9_pct": all(v["equal_pct"] >= 99.9 for v in per_class.values())}


def _cpu() -> dict:
    """The CPU's model, core count and bf16 flags for the JSON row (per-tile times differ by CPU and day)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpu_network_options import cpu_facts

    return cpu_facts()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=0,
                        help="slab of this many 2 mm slices centred on the liver (default 0: the whole 582-slice scan)")
    parser.add_argument("--in_plane", type=int, default=0, help="crop in-plane to N x N voxels (a smoke test; "
                        "default 0: the whole 725 x 725)")
    parser.add_argument("--max_ram_gb", type=float, default=8.0, help="--max_ram_gb of our command (default 8)")
    parser.add_argument("--seed", type=int, default=3, help="phantom and weight seed (default 3)")
    parser.add_argument("--no_results", action="store_true", help="do not append the JSON row")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=[m for m in MODES if m != "ours_all_tiles"],
                        help="what to run (default all but ours_all_tiles): ours (our command's default, the body "
                             "crop), ours_bf16 (--cpu_bf16, where the CPU has bf16), ours_openvino (--cpu_openvino), "
                             "ours_all_tiles (--no_body_crop: every tile, as long as nnU-Net), nnunet "
                             "(nnUNetv2_predict_from_modelfolder)")
    parser.add_argument("--trained_model", default=None,
                        help="instead of the timing: a trained model folder (e.g. the demo's) whose float32 and "
                             "--fast_path labels are compared, per class, on --images")
    parser.add_argument("--fast_path", choices=["cpu_bf16", "cpu_openvino"], default="cpu_bf16",
                        help="with --trained_model: the opt-in path compared (default cpu_bf16)")
    parser.add_argument("--images", nargs="+", default=[], help="with --trained_model: CT files to predict")
    parser.add_argument("--fold", default="0", help="with --trained_model: the fold (default 0)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.work), args.max_ram_gb)
        return

    if args.trained_model:
        if not args.images:
            raise SystemExit("--trained_model needs --images")
        row = {"date": time.strftime("%Y-%m-%d"), **_cpu(), "trained_agreement":
               trained_agreement(Path(args.trained_model), [Path(p) for p in args.images], args.fold,
                                 args.fast_path),
               "command": "python benchmarks/cpu_whole_body.py " + " ".join(sys.argv[1:])}
        for name, v in row["trained_agreement"]["per_class"].items():
            print(f"  {name:20s} {v['voxels']:10d} voxels, {v['equal_pct']:.4f} % equal with --{args.fast_path}")
        if not args.no_results:
            with open(RESULTS, "a") as f:
                f.write(json.dumps(row) + "\n")
        return
    modes = [m for m in MODES if m in args.modes]
    if "ours_bf16" in modes:
        from nnunet_ctorg.inference.chunk_steps import cpu_bf16_supported

        if not cpu_bf16_supported():
            print("this CPU has no bf16 instructions: ours_bf16 is not run")
            modes.remove("ours_bf16")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        model, _, scan = make_inputs(work, args)
        print(f"inputs ready in {time.perf_counter() - started:.0f} s: scan {scan['scan_zyx']} (of "
              f"{scan['full_scan_zyx']}) at {SPACING_XYZ[::-1]} mm (z, y, x)", flush=True)
        env = {**os.environ, "nnUNet_raw": str(work), "nnUNet_preprocessed": str(work),
               "nnUNet_results": str(work)}
        rows: dict = {}
        for mode in modes:
            print(f"running {mode} ...", flush=True)
            rows[mode] = run_measured([sys.executable, __file__, "--child", mode, "--work", str(work),
                                       "--max_ram_gb", str(args.max_ram_gb)], env)
            rows[mode].update(json.loads((work / f"timing_{mode}.json").read_text()))
            print(f"  {mode}: {rows[mode]}", flush=True)
        if "nnunet" in rows:
            for mode in rows:
                if mode != "nnunet":
                    rows[mode]["labels"] = agreement(work, mode)
    row = {"date": time.strftime("%Y-%m-%d"), **_cpu(), **scan, "spacing_zyx": SPACING_XYZ[::-1],
           "mirroring": False, "max_ram_gb": args.max_ram_gb, **rows,
           "command": "python benchmarks/cpu_whole_body.py " + " ".join(sys.argv[1:])}
    ref = rows.get("nnunet")
    if ref:
        print(f"\nnnUNetv2_predict -device cpu: {ref['wall_s']:.0f} s, peak RSS {ref['peak_rss_gb']:.1f} GB "
              f"(PSS {ref['peak_pss_gb']:.1f} GB), "
              f"{ref['tiles_run']} tiles, {ref['network_s'] / max(1, ref['tiles_run']):.2f} s network per tile")
    for mode, r in rows.items():
        if mode == "nnunet":
            continue
        flags = " ".join(FAST_FLAGS[mode]) or "default"
        print(f"{mode} ({flags}): {r['wall_s']:.0f} s, peak RSS {r['peak_rss_gb']:.1f} GB (PSS "
              f"{r['peak_pss_gb']:.1f} GB; budget "
              f"{args.max_ram_gb:g}), {r['tiles_run']} tiles, {r['network_s'] / max(1, r['tiles_run']):.2f} s network "
              f"per tile")
        if ref:
            r["speedup"] = round(ref["wall_s"] / r["wall_s"], 2)
            r["tiles_ratio"] = round(ref["tiles_run"] / max(1, r["tiles_run"]), 2)
            lab = r["labels"]
            print(f"  {r['speedup']:.2f}x faster than nnUNetv2_predict ({r['tiles_ratio']:.2f}x fewer tiles); labels "
                  f"inside the body equal to nnU-Net's: {lab['body_equal_pct']:.4f} % of {lab['body_voxels']} "
                  f"voxels; per class: " + ", ".join(f"{c}: {v['equal_pct']:.4f} %"
                                                      for c, v in lab["per_class"].items()))
    if not args.no_results:
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
