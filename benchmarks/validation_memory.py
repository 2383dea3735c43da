"""Final validation of a trainer: nnU-Net's ``perform_actual_validation`` vs the bounded one, peak RSS and time.

One preprocessed nnU-Net dataset per class count (``--classes``, default 4 and 20): head-to-knee phantoms with a
table at 0.8 x 0.8 x 1.5 mm, ``--size`` in-plane (default 384), one validation case per ``--lengths`` (default
160 and 640 slices) and a short training case, planned and preprocessed by ``nnUNetv2_plan_and_preprocess``
(the target spacing is the scans', as for a CT-ORG-like dataset at its median spacing). The network is
nnU-Net's planned architecture shrunk to a CPU-sized one (``--features`` base features, patch ``--patch``;
random weights, seeded, the same in both runs; no mirroring, as a fresh trainer validates), so the figures
measure the validation pipeline, not a model.

Each validation runs in its own process: (a) ``nnUNetTrainer.perform_actual_validation`` (nnU-Net's: whole
case, its export pool of ``nnUNet_def_n_proc`` spawned workers, its metrics pool), (b) the same trainer with
``BoundedValidation`` (``nnUNetTrainer_BoundedVal``; default budget). Peak RSS = the largest sum of the resident
memory of the process and all its children (workers included), sampled every 50 ms; ``main`` = the
validating process's own high-water mark (VmHWM; nnU-Net's export and both metrics run in spawned workers).
The labels of (b) are compared with (a)'s.

    python benchmarks/validation_memory.py [--lengths 160 640] [--classes 4 20] [--size 384]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        ppid = int(fields.get("PPid", "0").strip())
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_sampled(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``cmd``; (peak RSS of its process tree in GB, wall seconds, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-4000:]}")
    return peak[0] / 1024**3, time.perf_counter() - start, out


def make_dataset(root: Path, dataset_id: int, n_classes: int, lengths: list[int], size: int) -> Path:
    """Raw dataset (phantom CTs, labels 0..n_classes-1) with one case per length and a 96-slice training case."""
    import numpy as np
    import SimpleITK as sitk
    from chunked_inference import make_phantom
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    raw = root / "nnUNet_raw" / f"Dataset{dataset_id:03d}_Val{n_classes}"
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(exist_ok=True)
    for n in [96, *lengths]:
        case = f"case_{n:04d}"
        image_path = raw / "imagesTr" / f"{case}_0000.nii.gz"
        make_phantom(image_path, n, size)
        image = sitk.ReadImage(str(image_path))
        hu = sitk.GetArrayViewFromImage(image)
        # n_classes - 1 intensity bands of the body as organs: every class present in every case
        bands = np.linspace(-500, 1200, n_classes)
        labels = np.zeros(hu.shape, np.uint8)
        for c in range(1, n_classes):
            labels[(hu >= bands[c - 1]) & (hu < bands[c])] = c
        seg = sitk.GetImageFromArray(labels)
        seg.CopyInformation(image)
        sitk.WriteImage(seg, str(raw / "labelsTr" / f"{case}.nii.gz"))
    generate_dataset_json(str(raw), {0: "CT"}, {"background": 0, **{f"class_{c}": c for c in range(1, n_classes)}},
                          len(lengths) + 1, ".nii.gz", dataset_name=raw.name)
    return raw


def worker(args) -> None:
    """One validation in this process (``--worker nnunet|bounded``)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ctorg.inference.chunk_budgets import peak_rss_gb
    from nnunet_ctorg.training.bounded_variants import nnUNetTrainer_BoundedVal

    torch.set_num_threads(os.cpu_count() or 1)
    preprocessed = Path(args.preprocessed)
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    cls = nnUNetTrainer if args.worker == "nnunet" else nnUNetTrainer_BoundedVal
    torch.manual_seed(0)
    trainer = cls(plans, "3d_bench", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    start = time.perf_counter()
    trainer.perform_actual_validation(save_probabilities=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "main_vmhwm_gb": peak_rss_gb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[160, 640], help="slices of the validation cases")
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 20], help="class counts (background included)")
    parser.add_argument("--size", type=int, default=384, help="in-plane size in voxels (0.8 mm)")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 128, 128], help="the network's patch")
    parser.add_argument("--features", type=int, default=8, help="base features of the shrunk network")
    parser.add_argument("--work_dir", default=None, help="keep the datasets here (default: a temporary folder)")
    parser.add_argument("--worker", choices=["nnunet", "bounded"], help=argparse.SUPPRESS)
    parser.add_argument("--preprocessed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import numpy as np
    import SimpleITK as sitk

    from nnunet_ctorg.demo import add_cpu_demo_configuration, console_script
    from nnunet_ctorg.env import ext_trainer_value

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="validation_memory_"))
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_extTrainer=ext_trainer_value())
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    rows = []
    for n_classes in args.classes:
        dataset_id = 800 + n_classes
        raw = work / "nnUNet_raw" / f"Dataset{dataset_id:03d}_Val{n_classes}"
        preprocessed = work / "nnUNet_preprocessed" / raw.name
        if not (preprocessed / "nnUNetPlans.json").is_file():
            make_dataset(work, dataset_id, n_classes, args.lengths, args.size)
            subprocess.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres",
                            "-np", "1", "-npfp", "1", "--no_pbar"], env=env, check=True, capture_output=True)
            add_cpu_demo_configuration(preprocessed / "nnUNetPlans.json", "3d_bench", tuple(args.patch),
                                       args.features)
        results = work / "nnUNet_results" / raw.name
        for n in args.lengths:
            case = f"case_{n:04d}"
            split = {"train": ["case_0096"], "val": [case]}
            (preprocessed / "splits_final.json").write_text(json.dumps([split] * 5))
            measured = {}
            for mode in ("nnunet", "bounded"):
                trainer = "nnUNetTrainer" if mode == "nnunet" else "nnUNetTrainer_BoundedVal"
                folder = results / f"{trainer}__nnUNetPlans__3d_bench" / "fold_0" / "validation"
                peak, wall, out = run_sampled([sys.executable, __file__, "--worker", mode, "--preprocessed",
                                               str(preprocessed)], env)
                inner = json.loads(out.strip().splitlines()[-1])
                measured[mode] = {"peak_tree_gb": peak, "wall_s": wall, "validation_s": inner["seconds"],
                                  "main_gb": inner["main_vmhwm_gb"],
                                  "labels": sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))}
            a, b = measured["nnunet"], measured["bounded"]
            row = {"classes": n_classes, "slices": n, "in_plane": args.size,
                   "nnunet_peak_gb": round(a["peak_tree_gb"], 2), "bounded_peak_gb": round(b["peak_tree_gb"], 2),
                   "rss_ratio": round(b["peak_tree_gb"] / a["peak_tree_gb"], 3),
                   "nnunet_main_gb": round(a["main_gb"], 2), "bounded_main_gb": round(b["main_gb"], 2),
                   "nnunet_validation_s": round(a["validation_s"], 1),
                   "bounded_validation_s": round(b["validation_s"], 1),
                   "time_ratio": round(b["validation_s"] / a["validation_s"], 3),
                   "labels_equal": float(np.mean(a["labels"] == b["labels"]))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for n_classes in args.classes:
        mine = {r["slices"]: r["bounded_peak_gb"] for r in rows if r["classes"] == n_classes}
        if len(mine) > 1:
            print(f"{n_classes} classes: bounded peak RSS {max(mine)} vs {min(mine)} slices: "
                  f"{mine[max(mine)] / mine[min(mine)]:.3f}x")


if __name__ == "__main__":
    main()
