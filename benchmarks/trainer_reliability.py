"""Does a trainer lose organs? Per-organ Dice and dead classes over seeds, at the demo's budget.

Each trainer is trained (``nnUNetv2_train``, fold 0) with every seed on the README demo's data
(10 phantom CTs at 6 mm, ``3d_cpu_demo``: 64 x 48 x 48 patch, 8 base features), predicts the
held-out phantoms with ``nnUNetv2_predict`` and is scored with nnU-Net's evaluation. A class is
*dead* in a run when its mean Dice on the held-out phantoms that contain it is below 0.05. The
time is the training's wall time, from nnU-Net's training log (final validation included).

    python benchmarks/trainer_reliability.py -o /tmp/reliability --seeds 0 1 2

Runs are resumable: a finished (trainer, seed) keeps its ``runs/*.json`` and is not repeated.
The printed table is also written to ``reliability.md`` in the working folder.
"""

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_TRAINERS = ("nnUNetTrainer_CTOrgDemo", "CTOrgIOUTrainer_plainIOU_demo", "CTOrgIOUCETrainer_demo",
                    "CTOrgIOUTrainer_batchIOU_demo", "CTOrgIOUTrainer_batchIOU_CEwarmup_demo",
                    "CTOrgIOUTrainer_batchLogIOU_demo", "CTOrgIOUTrainer_batchLogIOU_skipAbsent_demo")


def training_seconds(fold_dir: Path) -> float:
    """Wall time of the training, from the first to the last time stamp of nnU-Net's newest training log
    (an interrupted attempt leaves an older log beside it)."""
    from datetime import datetime

    stamps = []
    logs = sorted(fold_dir.glob("training_log_*.txt"), key=lambda f: f.stat().st_mtime)
    for log in logs[-1:]:
        for line in log.read_text().splitlines():
            try:
                stamps.append(datetime.strptime(line[:26], "%Y-%m-%d %H:%M:%S.%f"))
            except ValueError:
                continue
    if not stamps:
        raise RuntimeError(f"no time stamps in the training logs of {fold_dir}")
    return (max(stamps) - min(stamps)).total_seconds()


def run_one(work: Path, raw: Path, trainer: str, seed: int, device: str) -> dict:
    """Train, predict and score one (trainer, seed); the result is cached in ``work/runs``."""
    from nnunet_ctorg.demo import dead_organs, dice_table, nnunet_environment, train_predict_evaluate
    from nnunet_ctorg.io import write_text_atomic
    from nnunet_ctorg.labels import CTORG_LABELS
    from nnunet_ctorg.training.trainers import SEED_ENVIRONMENT_VARIABLE

    result_file = work / "runs" / f"{trainer}_seed{seed}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    env = nnunet_environment(work)
    env["nnUNet_results"] = str(work / f"results_seed{seed}")
    env[SEED_ENVIRONMENT_VARIABLE] = str(seed)
    name = f"{trainer}_seed{seed}"
    model_dir = train_predict_evaluate(raw, trainer, device, env, work / "logs" / f"{name}.txt",
                                       work / "predictions" / name, work / "summaries" / f"{name}.json")
    wall = training_seconds(model_dir / "fold_0")
    rows = dice_table(json.loads((work / "summaries" / f"{name}.json").read_text()), CTORG_LABELS)
    result = {"trainer": trainer, "seed": seed, "wall_s": wall, "dice": {organ: mean for organ, mean, _, _ in rows},
              "dead": dead_organs(rows)}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(result, indent=2), result_file)
    return result


def table(results: list[dict]) -> str:
    """Markdown: one row per run, then one per trainer (mean over seeds, dead classes in all seeds)."""
    import numpy as np

    organs = list(dict.fromkeys(o for r in results for o in r["dice"]))
    head = "| trainer | seed | " + " | ".join(organs) + " | mean | dead | training (s) |"
    lines = [head, "|" + "---|" * (len(organs) + 5)]
    for r in results:
        dice = [r["dice"].get(o, float("nan")) for o in organs]
        lines.append(f"| {r['trainer']} | {r['seed']} | " + " | ".join(f"{d:.3f}" for d in dice)
                     + f" | {np.nanmean(dice):.3f} | {len(r['dead'])} | {r['wall_s']:.0f} |")
    lines += ["", "| trainer | seeds | " + " | ".join(organs) + " | mean | dead classes (all seeds) | training (s) |",
              "|" + "---|" * (len(organs) + 5)]
    for trainer in dict.fromkeys(r["trainer"] for r in results):
        runs = [r for r in results if r["trainer"] == trainer]
        dice = np.array([[r["dice"].get(o, np.nan) for o in organs] for r in runs])
        per_organ = np.nanmean(dice, axis=0)
        lines.append(f"| {trainer} | {len(runs)} | " + " | ".join(f"{d:.3f}" for d in per_organ)
                     + f" | {np.nanmean(dice):.3f} | {sum(len(r['dead']) for r in runs)} | "
                     + f"{np.mean([r['wall_s'] for r in runs]):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True, help="working folder (dataset, models, results)")
    parser.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS),
                        help=f"trainer class names (found through nnUNet_extTrainer). Default: {DEFAULT_TRAINERS}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds. Default: 0 1 2")
    parser.add_argument("--order", choices=["seed", "trainer"], default="seed",
                        help="loop order: all trainers for one seed first (seed), or all seeds of one trainer "
                             "first (trainer). Default: seed")
    parser.add_argument("--num_train", type=int, default=10, help="training phantoms. Default: 10 (the demo's)")
    parser.add_argument("--num_test", type=int, default=3, help="held-out phantoms. Default: 3 (the demo's)")
    parser.add_argument("--spacing", nargs=3, type=float, default=[6.0, 6.0, 6.0], metavar=("X", "Y", "Z"),
                        help="phantom spacing in mm (use a new working folder per spacing). Default: 6 6 6 (the "
                             "demo's)")
    parser.add_argument("-device", default="cpu", choices=["cpu", "cuda"], help="Default: cpu")
    parser.add_argument("-np", type=int, default=min(os.cpu_count() or 1, 2),
                        help="processes for the phantoms and preprocessing. Default: min(CPUs, 2)")
    parser.add_argument("--table_only", action="store_true",
                        help="train nothing: print the table of every finished run in the working folder")
    args = parser.parse_args()
    if any(s < 0 for s in args.seeds):
        sys.exit(f"trainer_reliability: error: seeds must be >= 0, got {args.seeds}")

    from nnunet_ctorg.demo import nnunet_environment, prepare_demo_dataset
    from nnunet_ctorg.io import write_text_atomic

    work = Path(args.output).resolve()
    if args.table_only:
        results = [json.loads(f.read_text()) for f in sorted((work / "runs").glob("*.json"))]
        if not results:
            sys.exit(f"trainer_reliability: error: no finished runs in {work / 'runs'}")
        order = {t: i for i, t in enumerate(dict.fromkeys([*args.trainers, *(r["trainer"] for r in results)]))}
        results.sort(key=lambda r: (order[r["trainer"]], r["seed"]))
        text = table(results)
        write_text_atomic(text + "\n", work / "reliability.md")
        print(text)
        return
    (work / "logs").mkdir(parents=True, exist_ok=True)
    raw = prepare_demo_dataset(work, args.num_train, args.num_test, args.np, nnunet_environment(work),
                               work / "logs" / "prepare.txt", spacing=tuple(args.spacing))
    pairs = ([(t, s) for s in args.seeds for t in args.trainers] if args.order == "seed"
             else [(t, s) for t in args.trainers for s in args.seeds])
    results = []
    for i, (trainer, seed) in enumerate(pairs):
        print(f"== run {i + 1}/{len(pairs)}: {trainer}, seed {seed}", flush=True)
        results.append(run_one(work, raw, trainer, seed, args.device))
        r = results[-1]
        print("   " + "  ".join(f"{o} {d:.3f}" for o, d in r["dice"].items()) + f"  dead {r['dead']}  "
              f"{r['wall_s']:.0f} s", flush=True)
    text = table(results)
    write_text_atomic(text + "\n", work / "reliability.md")
    print(text)


if __name__ == "__main__":
    main()
