"""``nnunet_ctorg_demo``: the whole pipeline on synthetic CT-ORG phantoms, on the CPU, in minutes.

Steps: generate phantom CT-ORG cases -> convert to an nnU-Net raw dataset ->
``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_train ... -tr CTOrgIOUTrainer_demo`` ->
``nnUNetv2_predict`` on the held-out phantoms -> per-organ Dice table. Everything, including
nnU-Net's three folders, stays inside the working folder. Finished steps are skipped when the
command is run again on the same folder. While nnU-Net trains, one line per epoch shows its pseudo Dice
per organ and the time left; nnU-Net's whole output goes to the log.
"""

import argparse
import codecs
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
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


def _run(cmd: list[str], env: dict[str, str], log: Path, progress: "TrainingProgress | None" = None) -> None:
    """Run ``cmd`` with its output appended to ``log``; with ``progress``, print one line per finished epoch."""
    print("  $ " + " ".join(cmd), flush=True)
    cmd = [console_script(cmd[0]), *cmd[1:]]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        if progress is None:
            returncode = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        else:
            returncode = _run_showing_progress(cmd, env, f, progress)
    if returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {returncode}); see {log}")


def _run_showing_progress(cmd: list[str], env: dict[str, str], log_file, progress: "TrainingProgress") -> int:
    """Run ``cmd``, copy its output to ``log_file`` as it comes and print ``progress``'s epoch lines."""
    env = {**env, "PYTHONUNBUFFERED": "1"}  # nnU-Net's prints reach the pipe when made, not 8 kB later
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def show(text: str) -> None:
        nonlocal showing
        if showing:
            try:
                lines = [epoch.line() for epoch in progress.feed(text)]
            except Exception as e:  # never let the display cost the log or the training
                showing, lines = False, [f"  (no more progress lines: {e!r}; the log has everything)"]
            for line in lines:
                print(line, flush=True)

    def pump() -> None:
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
            text = decoder.decode(chunk)
            try:
                log_file.write(text)
                log_file.flush()
            except ValueError:  # the log was closed: the command ended, a worker still holds the pipe (below)
                return
            show(text)
        show(decoder.decode(b"", final=True) + "\n")

    showing = True
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode = proc.wait()
    except BaseException:  # Ctrl-C: do not leave the training running
        proc.kill()
        proc.wait()
        raise
    reader.join(timeout=10)  # a data-loader worker that outlives nnU-Net could keep the pipe open
    if not reader.is_alive():
        proc.stdout.close()
    return returncode


@dataclass(frozen=True)
class EpochProgress:
    """One finished epoch of an ``nnUNetv2_train`` run, as its output reports it."""

    epoch: int  # 1-based (nnU-Net prints "Epoch 0" for the first)
    total: int | None  # epochs of the run, when known
    dice: dict[str, float]  # nnU-Net's pseudo Dice per organ (validation patches of this epoch)
    seconds: float  # this epoch's time
    seconds_left: float | None  # estimate for the remaining epochs (no final validation), when total is known

    def line(self) -> str:
        of = f" of {self.total}" if self.total else ""
        width = len(str(self.total)) if self.total else 1
        organs = "  ".join(f"{name} {'  -  ' if value != value else f'{value:.2f}'}"
                           for name, value in self.dice.items())
        left = ""
        if self.seconds_left is not None:
            left = f", ~{_duration(self.seconds_left)} left" if self.seconds_left > 0 else ", final validation next"
        return f"  epoch {self.epoch:>{width}}{of}  {organs}  ({self.seconds:.0f} s/epoch{left})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


_EPOCH = re.compile(r"(?:^|\s)Epoch (\d+)\s*$")
_PSEUDO_DICE = re.compile(r"Pseudo dice \[(.*)\]")
_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.eE+-]+) s")
_NUMPY_SCALAR = re.compile(r"np\.\w+\(([^()]*)\)")  # NumPy 2 prints np.float32(0.25)


@dataclass
class TrainingProgress:
    """Reads ``nnUNetv2_train``'s output piece by piece and reports each finished epoch.

    nnU-Net's ``on_epoch_start``/``on_epoch_end`` print, each line after a timestamp, ``Epoch N``, ...,
    ``Pseudo dice [d1, d2, ...]`` (one value per foreground label, in label order) and ``Epoch time: T s``;
    the last one closes the epoch. Pieces may split lines anywhere; other lines are ignored.
    """

    organs: list[str]  # foreground label names in nnU-Net's order (:func:`organ_names`)
    total_epochs: int | None = None
    recent_epochs: int = 5  # the estimate uses the median time of the last ones
    _pending: str = field(default="", init=False, repr=False)  # an unfinished line
    _epoch: int | None = field(default=None, init=False, repr=False)  # the running epoch, 0-based as nnU-Net's
    _dice: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _times: list[float] = field(default_factory=list, init=False, repr=False)

    def feed(self, text: str) -> list[EpochProgress]:
        """The epochs finished in ``text`` (a piece of the output; an unfinished line waits for the rest)."""
        lines = re.split(r"\r\n|\r|\n", self._pending + text)
        self._pending = lines.pop()
        finished = []
        for line in lines:
            if (found := _EPOCH.search(line)) is not None:
                self._epoch, self._dice = int(found.group(1)), {}
            elif (found := _PSEUDO_DICE.search(line)) is not None:
                self._dice = self._organ_values(found.group(1))
            elif (found := _EPOCH_TIME.search(line)) is not None and self._epoch is not None:
                seconds = float(found.group(1))
                self._times.append(seconds)
                done = self._epoch + 1
                left = None
                if self.total_epochs:
                    left = max(self.total_epochs - done, 0) * statistics.median(self._times[-self.recent_epochs:])
                finished.append(EpochProgress(done, self.total_epochs, self._dice, seconds, left))
                self._epoch, self._dice = None, {}
        return finished

    def _organ_values(self, listed: str) -> dict[str, float]:
        values = []
        for item in _NUMPY_SCALAR.sub(r"\1", listed).split(","):
            try:
                values.append(float(item))
            except ValueError:
                return {}  # not a list of numbers: show no Dice rather than wrong ones
        names = self.organs if len(self.organs) == len(values) else [f"class {i + 1}" for i in range(len(values))]
        return dict(zip(names, values))


def organ_names(dataset_json: dict) -> list[str]:
    """The names of the foreground labels (or regions) of ``dataset_json``, in the order of nnU-Net's pseudo Dice."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    labels = dataset_json["labels"]
    manager = LabelManager(labels, dataset_json.get("regions_class_order"))
    if manager.has_regions:
        by_region = {tuple(v) if isinstance(v, (list, tuple)) else v: k for k, v in reversed(labels.items())}
        return [by_region[r] for r in manager.foreground_regions]
    by_value = {int(v[0] if isinstance(v, (list, tuple)) else v): k for k, v in reversed(labels.items())
                if k != "ignore"}
    return [by_value[int(v)] for v in manager.foreground_labels]


def trainer_epochs(trainer: str) -> int | None:
    """The epochs trainer ``trainer`` runs, when its class says so before it is built (the demo budgets)."""
    from nnunet_ctorg.training.variants import demo_budgets, reliability_candidates

    for module in (demo_budgets, reliability_candidates):
        budget_epochs = getattr(getattr(module, trainer, None), "budget_epochs", None)
        if budget_epochs is not None:
            return budget_epochs()
    return None


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
    import json

    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ctorg.labels import CTORG_LABELS

    print(f"[3/5] training {trainer} on the {device.upper()} (log: {log})", flush=True)
    model_dir = Path(env["nnUNet_results"]) / raw.name / f"{trainer}__{DEMO_PLANS}__{DEMO_CONFIGURATION}"
    if not (model_dir / "fold_0" / "checkpoint_final.pth").is_file():
        progress = TrainingProgress(organ_names(json.loads((raw / "dataset.json").read_text())),
                                    trainer_epochs(trainer))
        print("  pseudo Dice per organ: nnU-Net's, on this epoch's validation patches", flush=True)
        _run(["nnUNetv2_train", str(DEMO_DATASET_ID), DEMO_CONFIGURATION, "0", "-tr", trainer,
              "-p", DEMO_PLANS, "-device", device], env, log, progress)

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
              "(docs/training.md, 'Reliability of the trainers').")
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
