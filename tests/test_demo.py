"""Pieces of the demo command that are not exercised by the slow end-to-end training test."""

import json

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
