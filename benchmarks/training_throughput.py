"""Training iterations per second: CTOrgIOUTrainer (device augmentation) vs nnUNetTrainer (issue 5).

GPU benchmark. Builds a phantom CT-ORG dataset (abdomen, 1.5 mm by default), plans and preprocesses
it with nnU-Net (3d_fullres), then for each trainer runs nnU-Net's own ``on_train_start`` (network,
optimiser, data loaders with ``nnUNet_n_proc_DA`` workers, default 2: a machine with few cores per
GPU) and times ``train_step(next(dataloader_train))`` over N iterations after a warm-up, same dataset,
patch and batch. Prints it/s and the ratio; target >= 2x.

    python benchmarks/training_throughput.py [--iterations 50] [--spacing 1.5] [--work DIR]
    python benchmarks/training_throughput.py --device cpu --spacing 8 --iterations 3   # smoke run, no GPU
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def prepare_dataset(work: Path, spacing: float, n_cases: int) -> tuple[Path, Path]:
    import subprocess

    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.demo import console_script
    from nnunet_ctorg.phantoms.cli import generate_dataset

    raw = work / "nnUNet_raw" / "Dataset611_Throughput"
    preprocessed = work / "nnUNet_preprocessed" / raw.name
    if not (preprocessed / "nnUNetPlans_3d_fullres").is_dir():
        generate_dataset("ctorg", str(work / "ctorg"), n_cases, "abdomen", (spacing,) * 3, first_id=21,
                         num_processes=min(4, os.cpu_count() or 1))
        raw = convert_ctorg_dataset(work / "ctorg", work / "nnUNet_raw", 611, "Throughput")
        subprocess.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "611", "-c", "3d_fullres",
                        "-np", str(min(4, os.cpu_count() or 1))], check=True)
    return raw, preprocessed


def iterations_per_second(trainer_class, raw: Path, preprocessed: Path, device: str, iterations: int,
                          warmup: int) -> tuple[float, list[int], int]:
    import torch

    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 trainers pop this key (run_training sets it)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    trainer = trainer_class(plans, "3d_fullres", 0, dataset_json, device=torch.device(device))
    trainer.on_train_start()
    trainer.network.train()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    try:
        for _ in range(warmup):
            trainer.train_step(next(trainer.dataloader_train))
        sync()
        start = time.perf_counter()
        for _ in range(iterations):
            trainer.train_step(next(trainer.dataloader_train))
        sync()
        elapsed = time.perf_counter() - start
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
    return iterations / elapsed, list(trainer.configuration_manager.patch_size), trainer.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50, help="timed iterations per trainer (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first (default 10)")
    parser.add_argument("--spacing", type=float, default=1.5, help="phantom spacing in mm (default 1.5)")
    parser.add_argument("--cases", type=int, default=6, help="phantom cases (default 6)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="training device (default cuda)")
    parser.add_argument("--n_proc_DA", default="2", help="nnUNet_n_proc_DA for both trainers (default 2)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("training_throughput needs a CUDA GPU (use --device cpu for a smoke run)")
    work = args.work or Path(tempfile.mkdtemp(prefix="nnunet_ctorg_throughput_"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / name)
    os.environ["nnUNet_n_proc_DA"] = args.n_proc_DA
    raw, preprocessed = prepare_dataset(work, args.spacing, args.cases)

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ctorg.training.trainers import CTOrgIOUTrainer

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    rates = {}
    for cls in (nnUNetTrainer, CTOrgIOUTrainer):
        rate, patch, batch = iterations_per_second(cls, raw, preprocessed, args.device, args.iterations, args.warmup)
        rates[cls.__name__] = rate
        print(f"{cls.__name__:<18} {rate:6.2f} it/s  (patch {patch}, batch {batch}, nnUNet_n_proc_DA "
              f"{args.n_proc_DA}, {device_name})", flush=True)
    print(f"CTOrgIOUTrainer / nnUNetTrainer: {rates['CTOrgIOUTrainer'] / rates['nnUNetTrainer']:.2f}x "
          f"(target >= 2x on a GPU)")


if __name__ == "__main__":
    main()
