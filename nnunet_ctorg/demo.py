"""``nnunet_ctorg_demo``: the whole pipeline on synthetic CT-ORG phantoms, on the CPU, in minutes.

Steps: generate phantom CT-ORG cases -> convert to an nnU-Net raw dataset ->
``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_train ... -tr CTOrgIOUTrainer_demo`` ->
``nnUNetv2_predict`` on the held-out phantoms -> per-organ Dice table. Everything, including
nnU-Net's three folders, stays inside the working folder. Finished steps are skipped when the
command is run again on the same folder.
"""

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

DEMO_DATASET_ID = 601
DEMO_DATASET_NAME = "CTORGPhantom"
DEMO_PLANS = "nnUNetPlans_demo"
DEMO_TRAINER = "CTOrgIOUTrainer_demo"
DEMO_CONFIGURATION = "3d_cpu_demo"
# Coarse spacing, a patch of at most 64 x 48 x 48 and 8 base features (nnU-Net: 32) make one
# training iteration about 0.5 s on a 2-core CPU instead of about 10 s for the planned 3d_fullres.
DEMO_SPACING = (6.0, 6.0, 6.0)
DEMO_FOV = "thorax_abdomen"
DEMO_MAX_PATCH = (64, 48, 48)
DEMO_BASE_FEATURES = 8


def nnunet_environment(work_dir: Path) -> dict[str, str]:
    """Environment with nnU-Net's folders inside ``work_dir`` and our trainers findable."""
    from nnunet_ctorg.env import ext_trainer_value

    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(work_dir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work_dir / "nnUNet_preprocessed"),
        "nnUNet_results": str(work_dir / "nnUNet_results"),
        "nnUNet_extTrainer": ext_trainer_value(os.environ.get("nnUNet_extTrainer")),
        "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", str(min(os.cpu_count() or 1, 2))),
        "MPLCONFIGDIR": str(work_dir / ".matplotlib"),  # nnU-Net's progress plot caches fonts there
    })
    return env


def console_script(name: str) -> str:
    """Path of a console script next to this interpreter (its venv need not be activated), else ``name``."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    print("  $ " + " ".join(cmd), flush=True)
    cmd = [console_script(cmd[0]), *cmd[1:]]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); see {log}")


def add_cpu_demo_configuration(plans_file: Path, name: str = DEMO_CONFIGURATION,
                               max_patch: tuple[int, ...] = DEMO_MAX_PATCH,
                               base_features: int = DEMO_BASE_FEATURES, parent: str = "3d_fullres") -> None:
    """Add a configuration that inherits a planned one (``parent``) with a smaller patch and network.

    It reuses the parent's preprocessed data; the patch stays divisible by the pooling strides.
    """
    import copy
    import json

    import numpy as np
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ctorg.io import write_text_atomic

    plans = json.loads(plans_file.read_text())
    if parent not in plans["configurations"]:
        raise ValueError(f"{plans_file} has no configuration {parent!r}")
    full = PlansManager(plans).get_configuration(parent).configuration  # inheritance resolved
    arch = copy.deepcopy(full["architecture"])
    kwargs = arch["arch_kwargs"]
    divisor = np.prod(np.array(kwargs["strides"]), axis=0)
    patch = [int(max(d, (min(p, m) // d) * d)) for p, m, d in zip(full["patch_size"], max_patch, divisor)]
    n_stages = kwargs["n_stages"]
    kwargs["features_per_stage"] = [min(base_features * 2**i, 10 * base_features) for i in range(n_stages)]
    plans["configurations"][name] = {"inherits_from": parent, "patch_size": patch, "architecture": arch}
    write_text_atomic(json.dumps(plans, indent=4), plans_file)


def dice_table(summary: dict, labels: dict[str, int]) -> list[tuple[str, float, float, int]]:
    """(organ, mean Dice, sd, cases) per foreground label from nnU-Net's evaluation summary.

    Only cases whose reference contains the organ count (nnU-Net's ``n_ref`` > 0; without it, a
    NaN Dice marks a case where reference and prediction are both empty). Organs absent from
    every reference are left out.
    """
    import numpy as np

    rows = []
    for name, idx in labels.items():
        if idx == 0:
            continue
        values = []
        for case in summary["metric_per_case"]:
            metrics = case["metrics"].get(str(idx))
            if metrics is None or np.isnan(metrics["Dice"]) or metrics.get("n_ref", 1) == 0:
                continue
            values.append(metrics["Dice"])
        if values:
            rows.append((name, float(np.mean(values)), float(np.std(values)), len(values)))
    return rows


DEAD_ORGAN_DICE = 0.05


def dead_organs(rows: list[tuple[str, float, float, int]], threshold: float = DEAD_ORGAN_DICE) -> list[str]:
    """Organs of a :func:`dice_table` whose mean Dice is below ``threshold``: the model did not learn them."""
    return [name for name, mean, _, _ in rows if mean < threshold]


def trained_seed(fold_dir: Path) -> int | None:
    """The ``nnUNet_ctorg_seed`` a finished training ran with, read from its newest training log."""
    import re

    logs = sorted(fold_dir.glob("training_log_*.txt"), key=lambda f: f.stat().st_mtime)
    found = re.search(r"seeded training \(nnUNet_ctorg_seed=(\d+)\)", logs[-1].read_text()) if logs else None
    return int(found.group(1)) if found else None


def prepare_demo_dataset(work_dir: Path, n_train: int, n_test: int, num_processes: int, env: dict[str, str],
                         log: Path, spacing: tuple[float, float, float] = DEMO_SPACING) -> Path:
    """Steps 1-2: phantoms, conversion, nnU-Net planning and preprocessing. Returns the raw dataset folder.

    ``spacing`` (x, y, z mm) of the phantoms: the demo's 6 mm, or finer for ``benchmarks/trainer_reliability.py``.
    """
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.label_scheme import DEFAULT_SCHEME, LabelScheme
    from nnunet_ctorg.labels import CTORG_LABELS
    from nnunet_ctorg.phantoms.cli import generate_dataset

    ds = f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET_NAME}"
    print(f"[1/5] phantom CT-ORG dataset: {n_train} training + {n_test} test cases at {spacing} mm", flush=True)
    phantoms = work_dir / "ctorg_phantoms"
    # CT-ORG keeps cases 0-20 for testing: test phantoms are 0.., training phantoms 21..
    generate_dataset("ctorg", str(phantoms), n_test, DEMO_FOV, spacing, seed=0, first_id=0,
                     num_processes=num_processes)
    generate_dataset("ctorg", str(phantoms), n_train, DEMO_FOV, spacing, seed=0, first_id=21,
                     num_processes=num_processes)
    # CT-ORG's six organs only: spleen and pancreas of the unified scheme are never annotated here
    ctorg_scheme = LabelScheme.from_dict({"labels": CTORG_LABELS,
                                          "sources": {"ctorg": DEFAULT_SCHEME["sources"]["ctorg"]}})
    convert_ctorg_dataset(phantoms, work_dir / "nnUNet_raw", DEMO_DATASET_ID, DEMO_DATASET_NAME, scheme=ctorg_scheme,
                          num_processes=num_processes)

    print("[2/5] nnU-Net planning and preprocessing", flush=True)
    plans_file = work_dir / "nnUNet_preprocessed" / ds / f"{DEMO_PLANS}.json"
    if not plans_file.is_file() or DEMO_CONFIGURATION not in plans_file.read_text():
        _run(["nnUNetv2_plan_and_preprocess", "-d", str(DEMO_DATASET_ID), "-c", "3d_fullres",
              "-overwrite_plans_name", DEMO_PLANS, "-np", str(num_processes), "-npfp", str(num_processes),
              "--verify_dataset_integrity", "--no_pbar"], env, log)
        add_cpu_demo_configuration(plans_file)
    return work_dir / "nnUNet_raw" / ds


def train_predict_evaluate(raw: Path, trainer: str, device: str, env: dict[str, str], log: Path,
                           predictions: Path, summary_file: Path) -> Path:
    """Steps 3-5: ``nnUNetv2_train`` fold 0 (skipped if finished), ``nnUNetv2_predict`` on imagesTs and
    nnU-Net's evaluation into ``summary_file``. Returns the model folder."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ctorg.labels import CTORG_LABELS

    print(f"[3/5] training {trainer} on the {device.upper()} (log: {log})", flush=True)
    model_dir = Path(env["nnUNet_results"]) / raw.name / f"{trainer}__{DEMO_PLANS}__{DEMO_CONFIGURATION}"
    if not (model_dir / "fold_0" / "checkpoint_final.pth").is_file():
        _run(["nnUNetv2_train", str(DEMO_DATASET_ID), DEMO_CONFIGURATION, "0", "-tr", trainer,
              "-p", DEMO_PLANS, "-device", device], env, log)

    print("[4/5] predicting the held-out phantoms", flush=True)
    _run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(predictions), "-d", str(DEMO_DATASET_ID),
          "-c", DEMO_CONFIGURATION, "-f", "0", "-tr", trainer, "-p", DEMO_PLANS, "-device", device,
          "-npp", "1", "-nps", "1", "--continue_prediction"], env, log)

    print("[5/5] evaluation", flush=True)
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # nnU-Net warns about labels absent from every case (brain)
        warnings.simplefilter("ignore", RuntimeWarning)
        compute_metrics_on_folder(str(raw / "labelsTs"), str(predictions), str(summary_file), SimpleITKIO(), ".nii.gz",
                                  [v for v in CTORG_LABELS.values() if v], num_processes=1)
    return model_dir


def run_demo(work_dir: Path, n_train: int, n_test: int, device: str, num_processes: int,
             seed: int | None = 0) -> Path:
    import json

    from nnunet_ctorg.labels import CTORG_LABELS
    from nnunet_ctorg.training.trainers import SEED_ENVIRONMENT_VARIABLE

    work_dir.mkdir(parents=True, exist_ok=True)
    env = nnunet_environment(work_dir)
    env[SEED_ENVIRONMENT_VARIABLE] = "" if seed is None else str(seed)
    log = work_dir / "demo_log.txt"
    t0 = time.time()
    raw = prepare_demo_dataset(work_dir, n_train, n_test, num_processes, env, log)
    predictions = work_dir / "predictions"
    summary_file = work_dir / "dice_summary.json"
    model_dir = train_predict_evaluate(raw, DEMO_TRAINER, device, env, log, predictions, summary_file)

    rows = dice_table(json.loads(summary_file.read_text()), CTORG_LABELS)
    trained = trained_seed(model_dir / "fold_0")
    if trained != seed:
        print(f"note: the model in {model_dir} was trained earlier "
              f"({'unseeded' if trained is None else f'seed {trained}'}); delete it to train with this --seed")
    seeded = "unseeded" if trained is None else f"seed {trained}"
    print(f"\nDice on {n_test} held-out phantom(s) ({DEMO_TRAINER}, {DEMO_CONFIGURATION}, {seeded}):")
    print(f"  {'organ':<10} {'Dice':>6}   sd")
    for name, mean, sd, _ in rows:
        print(f"  {name:<10} {mean:6.3f} {sd:5.3f}")
    for name in dead_organs(rows):
        print(f"warning: {name} was not learned (mean Dice < {DEAD_ORGAN_DICE} on the held-out phantoms that have "
              f"it): the demo's 720 iterations are too few for it. Do not use this model for {name}; train longer "
              "(README, 'Reliability of the trainers').")
    print(f"\nDone in {time.time() - t0:.0f} s. Outputs in {work_dir}:")
    for what, where in (("predictions", predictions), ("model", model_dir), ("metrics", summary_file), ("log", log)):
        print(f"  {what + ':':<13}{where}")
    return summary_file


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Run the nnunet-ctorg pipeline end to end on synthetic CT-ORG phantoms: generate, convert, "
                    "plan and preprocess, train CTOrgIOUTrainer_demo, predict the held-out cases and print a "
                    "per-organ Dice table. All files go to the working folder; re-running resumes.")
    parser.add_argument("-o", "--output", default="nnunet_ctorg_demo",
                        help="working folder (nnU-Net's raw, preprocessed and results folders go inside). "
                             "Default: ./nnunet_ctorg_demo")
    parser.add_argument("--num_train", type=int, default=10, help="training phantoms. Default: 10")
    parser.add_argument("--num_test", type=int, default=3, help="held-out phantoms. Default: 3")
    parser.add_argument("-device", default="cpu", choices=["cpu", "cuda", "mps"],
                        help="device for training and prediction. Default: cpu")
    parser.add_argument("-np", type=int, default=min(os.cpu_count() or 1, 2),
                        help="worker processes for phantoms and preprocessing. Default: min(CPUs, 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the training (Python, NumPy, torch and the data loaders; nnUNet_ctorg_seed). "
                             "A negative value trains unseeded, as nnU-Net does. Default: 0")
    args = parser.parse_args()
    if args.num_train < 5:
        sys.exit(f"nnunet_ctorg_demo: error: --num_train must be >= 5 (nnU-Net's 5-fold split), got {args.num_train}")
    if not 1 <= args.num_test <= 21:
        sys.exit(f"nnunet_ctorg_demo: error: --num_test must be in 1..21 (CT-ORG test ids), got {args.num_test}")
    try:
        run_demo(Path(args.output).resolve(), args.num_train, args.num_test, args.device, args.np,
                 seed=None if args.seed < 0 else args.seed)
    except (RuntimeError, ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_demo: error: {e}")


if __name__ == "__main__":
    main()
