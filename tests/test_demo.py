"""Pieces of the demo command that are not exercised by the slow end-to-end training test."""

import json
import os

import numpy as np
import pytest

from nnunet_ctorg.demo import add_cpu_demo_configuration, dead_organs, dice_table, nnunet_environment


def test_cpu_demo_configuration_inherits_fullres_with_divisible_patch_and_small_network(tmp_path):
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
                            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]},
            "_kw_requires_import": []}
    plans = {"configurations": {"3d_fullres": {"patch_size": [112, 80, 72], "architecture": arch}}}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    add_cpu_demo_configuration(path, max_patch=(64, 44, 48), base_features=8)
    demo = json.loads(path.read_text())["configurations"]["3d_cpu_demo"]
    assert demo["inherits_from"] == "3d_fullres"
    assert demo["patch_size"] == [64, 32, 48]  # 44 rounds down to a multiple of 16, 48 of 8
    assert demo["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64, 80]
    assert json.loads(path.read_text())["configurations"]["3d_fullres"]["architecture"] == arch


def test_dice_table_averages_per_organ_and_skips_absent_ones():
    summary = {"metric_per_case": [
        {"metrics": {"1": {"Dice": 0.8}, "2": {"Dice": float("nan")}}},
        {"metrics": {"1": {"Dice": 0.6}, "2": {"Dice": float("nan")}}},
    ]}
    rows = dice_table(summary, {"background": 0, "liver": 1, "brain": 2})
    assert len(rows) == 1 and rows[0][0] == "liver"
    assert np.isclose(rows[0][1], 0.7) and np.isclose(rows[0][2], 0.1) and rows[0][3] == 2


def test_dice_table_counts_only_cases_whose_reference_has_the_organ():
    # nnU-Net scores a false positive in a case without the organ as Dice 0 (n_ref 0): not a miss
    summary = {"metric_per_case": [
        {"metrics": {"1": {"Dice": 0.9, "n_ref": 50}, "2": {"Dice": 0.0, "n_ref": 0}}},
        {"metrics": {"1": {"Dice": 0.7, "n_ref": 40}, "2": {"Dice": 0.02, "n_ref": 30}}},
    ]}
    rows = dice_table(summary, {"background": 0, "liver": 1, "bladder": 2})
    assert [(name, n) for name, _, _, n in rows] == [("liver", 2), ("bladder", 1)]
    assert np.isclose(rows[1][1], 0.02)
    assert dead_organs(rows) == ["bladder"]
    assert dead_organs(rows, threshold=0.01) == []
    assert dead_organs([("lungs", 0.05, 0.0, 1), ("kidneys", 0.0499, 0.0, 1)]) == ["kidneys"]


def test_environment_keeps_everything_inside_the_work_folder(tmp_path):
    env = nnunet_environment(tmp_path)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "MPLCONFIGDIR"):
        assert env[name].startswith(str(tmp_path))
    assert "trainers" in env["nnUNet_extTrainer"]


def test_cpu_demo_configuration_can_inherit_an_added_configuration(tmp_path):
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]},
            "_kw_requires_import": []}
    plans = {"configurations": {"3d_fullres": {"patch_size": [112, 80, 72], "architecture": arch},
                                "3d_3mm": {"patch_size": [96, 96, 96], "architecture": arch,
                                           "antialiasing": {"sigma_factor": 0.5}},
                                "3d_3mm_plain": {"inherits_from": "3d_3mm", "antialiasing": None}}}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    add_cpu_demo_configuration(path, name="3d_3mm_plain_small", max_patch=(64, 64, 64), parent="3d_3mm_plain")
    small = json.loads(path.read_text())["configurations"]["3d_3mm_plain_small"]
    assert small["inherits_from"] == "3d_3mm_plain"
    assert small["patch_size"] == [64, 64, 64]  # from 3d_3mm's 96^3 through the inheritance chain
    with pytest.raises(ValueError, match="3d_missing"):
        add_cpu_demo_configuration(path, parent="3d_missing")


def test_trained_seed_is_read_from_the_newest_training_log(tmp_path):
    import os

    from nnunet_ctorg.demo import trained_seed

    assert trained_seed(tmp_path) is None
    old = tmp_path / "training_log_2026_1_1_00_00_00.txt"
    old.write_text("2026-01-01 00:00:00.000000: seeded training (nnUNet_ctorg_seed=4): loaders in this process\n")
    os.utime(old, (1, 1))
    assert trained_seed(tmp_path) == 4
    (tmp_path / "training_log_2026_1_2_00_00_00.txt").write_text("2026-01-02 00:00:00.000000: Epoch 0\n")
    assert trained_seed(tmp_path) is None  # the newest run was not seeded


# nnUNetv2_train's output for two epochs, verbatim (CTOrgIOUTrainer_tiny on CT-ORG phantoms, nnU-Net 2.8.1, NumPy 2)
NNUNET_TRAINING_OUTPUT = """\
2026-12-04 21:01:41.564657: Unable to plot network architecture:
2026-12-04 21:01:41.564727: No module named 'hiddenlayer'
2026-12-04 21:01:41.575586: 
2026-12-04 21:01:41.581634: Epoch 0
2026-12-04 21:01:41.581897: Current learning rate: 0.01
2026-12-04 21:02:03.337590: train_loss 4.4345
2026-12-04 21:02:03.337765: val_loss 4.1874
2026-12-04 21:02:03.337836: Pseudo dice [np.float32(0.0305), np.float32(0.0025), np.float32(0.0332), \
np.float32(0.0288), np.float32(0.0866), np.float32(0.0)]
2026-12-04 21:02:03.337902: Epoch time: 21.76 s
2026-12-04 21:02:03.337945: Yayy! New best EMA pseudo Dice: 0.030300000682473183
2026-12-04 21:02:04.230245: 
2026-12-04 21:02:04.230556: Epoch 1
2026-12-04 21:02:04.230804: Current learning rate: 0.00536
2026-12-04 21:02:20.940902: train_loss 4.285
2026-12-04 21:02:20.941113: val_loss 4.2107
2026-12-04 21:02:20.941226: Pseudo dice [np.float32(0.034), np.float32(0.0021), np.float32(0.0432), \
np.float32(0.0273), np.float32(0.0925), np.float32(0.0)]
2026-12-04 21:02:20.941330: Epoch time: 16.71 s
2026-12-04 21:02:20.941395: Yayy! New best EMA pseudo Dice: 0.030500000342726707
2026-12-04 21:02:22.309607: Training done.
"""  # noqa: W291 (nnU-Net prints the empty lines after their timestamp)
CTORG_ORGANS = ["liver", "bladder", "lungs", "kidneys", "bone", "brain"]


def _ctorg_dataset_json() -> dict:
    from nnunet_ctorg.labels import CTORG_LABELS

    return {"labels": dict(CTORG_LABELS)}


def _expected_epochs(total):
    from nnunet_ctorg.demo import EpochProgress

    first = dict(zip(CTORG_ORGANS, [0.0305, 0.0025, 0.0332, 0.0288, 0.0866, 0.0]))
    second = dict(zip(CTORG_ORGANS, [0.034, 0.0021, 0.0432, 0.0273, 0.0925, 0.0]))
    return [EpochProgress(1, total, first, 21.76, (total - 1) * 21.76),
            EpochProgress(2, total, second, 16.71, (total - 2) * (21.76 + 16.71) / 2)]


@pytest.mark.parametrize("piece", [1, 7, 100, 10**6])
def test_training_progress_reads_nnunets_output_in_any_pieces(piece):
    from nnunet_ctorg.demo import TrainingProgress, organ_names

    progress = TrainingProgress(organ_names(_ctorg_dataset_json()), total_epochs=45)
    text = NNUNET_TRAINING_OUTPUT
    epochs = [e for i in range(0, len(text), piece) for e in progress.feed(text[i:i + piece])]
    expected = _expected_epochs(45)
    assert [(e.epoch, e.total, e.dice, e.seconds) for e in epochs] == \
        [(e.epoch, e.total, e.dice, e.seconds) for e in expected]
    assert [e.seconds_left for e in epochs] == pytest.approx([e.seconds_left for e in expected])
    line = epochs[0].line()
    assert line.startswith("  epoch  1 of 45  liver 0.03  bladder 0.00  lungs 0.03  kidneys 0.03  bone 0.09  "
                           "brain 0.00")
    assert "(22 s/epoch, ~16 min left)" in line
    assert "epoch  2 of 45" in epochs[1].line() and "~14 min left" in epochs[1].line()


def test_training_progress_reads_nnunets_log_file_started_late_and_cut_mid_line():
    """The training_log_*.txt form (a space after every line), first read after epoch 0 had begun."""
    from nnunet_ctorg.demo import TrainingProgress

    log = "".join(line + " \n" for line in NNUNET_TRAINING_OUTPUT.splitlines())
    late = log[log.index("val_loss 4.1874"):]  # epoch 0's "Epoch 0" line was missed
    cut = late.index("Epoch time: 16.") + len("Epoch time: 16.")
    progress = TrainingProgress(CTORG_ORGANS, total_epochs=3)
    assert progress.feed(late[:cut]) == []  # epoch 0 unnumbered: not reported; epoch 1 not finished yet
    (epoch,) = progress.feed(late[cut:])
    assert (epoch.epoch, epoch.seconds, epoch.seconds_left) == (2, 16.71, pytest.approx(16.71))
    assert list(epoch.dice) == CTORG_ORGANS and epoch.dice["lungs"] == 0.0432
    assert "epoch 2 of 3" in epoch.line()


def test_training_progress_without_total_shows_no_estimate_and_nan_as_a_dash():
    from nnunet_ctorg.demo import TrainingProgress

    text = ("t: Epoch 9\nt: Pseudo dice [np.float64(0.5), np.float64(nan)]\nt: Epoch time: 3.0 s\n"
            "t: Epoch 10\nt: Pseudo dice [0.25, nan]\nt: Epoch time: 5.0 s\n")  # NumPy 2 and NumPy 1
    first, second = TrainingProgress(["liver", "brain"]).feed(text)
    assert (first.epoch, second.epoch) == (10, 11) and first.seconds_left is None
    assert second.dice["liver"] == 0.25 and np.isnan(second.dice["brain"])
    assert first.line() == "  epoch 10  liver 0.50  brain   -    (3 s/epoch)"
    # more values than organs: numbered rather than misnamed
    (odd,) = TrainingProgress(["liver"], 12).feed("t: Epoch 0\nt: Pseudo dice [0.1, 0.2]\nt: Epoch time: 2 s\n")
    assert list(odd.dice) == ["class 1", "class 2"] and odd.seconds_left == 22.0


def test_organ_names_follow_nnunets_label_order():
    from nnunet_ctorg.demo import organ_names

    assert organ_names(_ctorg_dataset_json()) == CTORG_ORGANS
    labels = {"background": 0, "kidney": 2, "liver": 1, "ignore": 3}
    assert organ_names({"labels": labels}) == ["liver", "kidney"]
    regions = {"background": 0, "whole": [1, 2], "core": [2]}
    assert organ_names({"labels": regions, "regions_class_order": [1, 2]}) == ["whole", "core"]


def test_demo_trainers_say_their_epochs_before_they_are_built():
    from nnunet_ctorg.demo import DEMO_TRAINER, trainer_epochs

    assert trainer_epochs(DEMO_TRAINER) == 45
    assert trainer_epochs("CTOrgIOUTrainer_demo3x") == trainer_epochs("nnUNetTrainer_CTOrgDemo3x") == 135
    assert trainer_epochs("CTOrgIOUTrainer_batchLogIOU_skipAbsent_demo") == 45
    assert trainer_epochs("CTOrgIOUTrainer") is None and trainer_epochs("NoSuchTrainer") is None


def test_run_with_progress_prints_epochs_and_keeps_the_whole_output_in_the_log(tmp_path, capsys):
    import sys

    from nnunet_ctorg.demo import TrainingProgress, _run

    script = ("import sys, time\n"
              f"text = {NNUNET_TRAINING_OUTPUT!r}\n"
              "for i in range(0, len(text), 50):\n"
              "    sys.stdout.write(text[i:i + 50])\n"
              "    time.sleep(0.001)\n"
              "sys.stdout.write('no newline at the end')\n")
    log = tmp_path / "log.txt"
    _run([sys.executable, "-c", script], dict(os.environ), log, TrainingProgress(CTORG_ORGANS, 2))
    printed = capsys.readouterr().out
    assert "epoch 1 of 2  liver 0.03" in printed and "epoch 2 of 2  liver 0.03" in printed
    assert "final validation next" in printed
    assert log.read_text().endswith(NNUNET_TRAINING_OUTPUT + "no newline at the end")
    with pytest.raises(RuntimeError, match="exit 3"):
        _run([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), log, TrainingProgress(CTORG_ORGANS))
