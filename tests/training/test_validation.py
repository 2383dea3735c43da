"""The bounded final validation against nnU-Net's own ``perform_actual_validation`` on the same checkpoint."""

import json
import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ctorg.training import trainers as ours
from nnunet_ctorg.training.validation import (
    STATE_FILE,
    VALIDATION_RAM_VARIABLE,
    BoundedValidation,
    metrics_processes,
    validation_ram_budget_gb,
)
from tests.conftest import nnunet_command

VALIDATION_CASES = ["ctorg_023", "ctorg_024", "ctorg_090"]  # ctorg_090: at 3 mm, the others at 10 mm


@pytest.fixture(scope="module")
def trained(module_nnunet_env):
    """``CTOrgIOUTrainer_tiny`` trained by ``nnUNetv2_train --npz`` on phantoms, three validation cases (one of
    them on a finer grid than the plans), its final validation the bounded one: (trainer folder, dataset)."""
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.demo import add_cpu_demo_configuration
    from nnunet_ctorg.phantoms.cli import generate_dataset

    env_root = module_nnunet_env
    src = env_root / "ctorg"
    generate_dataset("ctorg", str(src), 5, "abdomen", (10.0, 10.0, 10.0), first_id=21, progress=False)
    generate_dataset("ctorg", str(src), 1, "abdomen", (3.0, 3.0, 3.0), first_id=90, progress=False)
    raw = convert_ctorg_dataset(src, env_root / "nnUNet_raw", 993, "TinyVal")
    env = dict(os.environ, nnUNet_ctorg_seed="5")

    def run(*cmd):
        proc = subprocess.run([nnunet_command(cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    run("nnUNetv2_plan_and_preprocess", "-d", "993", "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar")
    preprocessed = env_root / "nnUNet_preprocessed" / raw.name
    add_cpu_demo_configuration(preprocessed / "nnUNetPlans.json")
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
    assert set(VALIDATION_CASES) <= set(cases)
    split = {"train": [c for c in cases if c not in VALIDATION_CASES], "val": VALIDATION_CASES}
    (preprocessed / "splits_final.json").write_text(json.dumps([split] * 5))
    out = run("nnUNetv2_train", "993", "3d_cpu_demo", "0", "-tr", "CTOrgIOUTrainer_tiny", "-device", "cpu", "--npz")
    assert "bounded validation of 3 cases" in out
    model = env_root / "nnUNet_results" / raw.name / "CTOrgIOUTrainer_tiny__nnUNetPlans__3d_cpu_demo"
    return model, raw, preprocessed


def _trainer(model: Path, raw: Path, preprocessed: Path, cls=ours.CTOrgIOUTrainer_tiny):
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8's run_training passes this through the plans
    trainer = cls(plans, "3d_cpu_demo", 0, json.loads((raw / "dataset.json").read_text()), device=torch.device("cpu"))
    trainer.initialize()
    trainer.load_checkpoint(str(model / "fold_0" / "checkpoint_final.pth"))
    return trainer


@pytest.fixture(scope="module")
def nnunet_validation(trained, tmp_path_factory):
    """nnU-Net's own validation of the same checkpoint, moved aside: its folder."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module

    model = trained[0]
    ours_folder = model / "fold_0" / "validation"
    ours_folder.rename(model / "fold_0" / "validation_bounded")
    trainer = _trainer(*trained)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "default_num_processes", 1)
        nnUNetTrainer.perform_actual_validation(trainer, save_probabilities=True)
    reference = tmp_path_factory.mktemp("nnunet_validation") / "validation"
    ours_folder.rename(reference)
    (model / "fold_0" / "validation_bounded").rename(ours_folder)
    return reference


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_bounded_validation_writes_nnunets_files(trained, nnunet_validation):
    folder = trained[0] / "fold_0" / "validation"
    for case in VALIDATION_CASES:
        mine, theirs = sitk.ReadImage(str(folder / f"{case}.nii.gz")), sitk.ReadImage(str(nnunet_validation /
                                                                                          f"{case}.nii.gz"))
        assert mine.GetSize() == theirs.GetSize() and mine.GetOrigin() == theirs.GetOrigin()
        assert mine.GetSpacing() == theirs.GetSpacing() and mine.GetDirection() == theirs.GetDirection()
        labels, reference = sitk.GetArrayFromImage(mine), sitk.GetArrayFromImage(theirs)
        assert len(np.unique(reference)) >= 3  # the trained model draws organs, not only background
        np.testing.assert_array_equal(labels, reference)
        p_mine = np.load(folder / f"{case}.npz")["probabilities"]
        p_theirs = np.load(nnunet_validation / f"{case}.npz")["probabilities"]
        assert p_mine.shape == p_theirs.shape and p_mine.dtype == p_theirs.dtype == np.float32
        np.testing.assert_allclose(p_mine, p_theirs, atol=1e-3)
        assert np.mean(np.abs(p_mine - p_theirs) <= 1e-6) >= 0.999
        with open(folder / f"{case}.pkl", "rb") as f, open(nnunet_validation / f"{case}.pkl", "rb") as g:
            mine_props, their_props = pickle.load(f), pickle.load(g)
        assert mine_props.keys() == their_props.keys()
        assert mine_props["bbox_used_for_cropping"] == their_props["bbox_used_for_cropping"]
    summary = json.loads((folder / "summary.json").read_text())
    reference = json.loads((nnunet_validation / "summary.json").read_text())
    assert summary["mean"] == reference["mean"] and summary["foreground_mean"] == reference["foreground_mean"]
    assert len(summary["metric_per_case"]) == len(VALIDATION_CASES)
    assert not list(folder.glob(".tmp-*"))


@pytest.mark.slow
def test_val_continues_a_killed_validation_and_refuses_stale_outputs(trained, nnunet_validation, monkeypatch):
    model = trained[0]
    folder = model / "fold_0" / "validation"
    trainer = _trainer(*trained)
    predicted = []
    original = BoundedValidation._validate_case

    def killed_after_one(self, chunked, data, properties, truncated, save_probabilities):
        if predicted:
            raise KeyboardInterrupt  # the process is killed during the second case
        predicted.append(os.path.basename(truncated))
        return original(self, chunked, data, properties, truncated, save_probabilities)

    for case in VALIDATION_CASES:  # a fresh start
        for ending in (".nii.gz", ".npz", ".pkl"):
            (folder / f"{case}{ending}").unlink()
    (folder / ".tmp-1-ctorg_024.nii.gz").write_bytes(b"half-written")
    monkeypatch.setattr(BoundedValidation, "_validate_case", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        trainer.perform_actual_validation(save_probabilities=True)
    assert predicted == [VALIDATION_CASES[0]] and (folder / f"{VALIDATION_CASES[0]}.nii.gz").is_file()
    assert not (folder / f"{VALIDATION_CASES[1]}.nii.gz").exists()

    def counted(self, chunked, data, properties, truncated, save_probabilities):
        predicted.append(os.path.basename(truncated))
        return original(self, chunked, data, properties, truncated, save_probabilities)

    predicted.clear()
    monkeypatch.setattr(BoundedValidation, "_validate_case", counted)
    trainer.perform_actual_validation(save_probabilities=True)  # what --val runs
    assert predicted == VALIDATION_CASES[1:]
    assert not list(folder.glob(".tmp-*"))
    for case in VALIDATION_CASES:
        np.testing.assert_array_equal(_labels(folder / f"{case}.nii.gz"),
                                      _labels(nnunet_validation / f"{case}.nii.gz"))
    assert json.loads((folder / "summary.json").read_text())["mean"] == json.loads(
        (nnunet_validation / "summary.json").read_text())["mean"]

    # other weights: nothing is taken over
    predicted.clear()
    with torch.no_grad():
        next(trainer.network.parameters()).add_(1.0)
    trainer.perform_actual_validation(save_probabilities=True)
    assert predicted == VALIDATION_CASES
    assert json.loads((folder / STATE_FILE).read_text())["weights"]


@pytest.mark.slow
def test_a_case_over_the_budget_fails_alone_with_the_gb_it_needs(trained, nnunet_validation, monkeypatch, capsys):
    folder = trained[0] / "fold_0" / "validation"
    trainer = _trainer(*trained)
    monkeypatch.setenv(VALIDATION_RAM_VARIABLE, "0.001")
    trainer.perform_actual_validation(save_probabilities=False)
    printed = capsys.readouterr().out
    needs = {case: float(re.search(rf"{case}: validation failed: {case}: {VALIDATION_RAM_VARIABLE} 0.001 is too "
                                   rf"small: about ([0-9.]+) GB are needed", printed).group(1))
             for case in VALIDATION_CASES}
    assert "no summary.json" in printed
    finer = "ctorg_090"
    others = max(v for c, v in needs.items() if c != finer)
    assert needs[finer] > others
    # the older labels and summary are removed; the older .npz/.pkl, which a run without --npz does not write, are left
    # as nnU-Net leaves them
    assert not list(folder.glob("ctorg_*.nii.gz")) and not (folder / "summary.json").exists()
    assert sorted(p.name for p in folder.glob("ctorg_*.npz")) == [f"{c}.npz" for c in VALIDATION_CASES]
    # between the others' need and the finer case's
    monkeypatch.setenv(VALIDATION_RAM_VARIABLE, f"{(needs[finer] + others) / 2:.3f}")
    trainer.perform_actual_validation(save_probabilities=False)
    printed = capsys.readouterr().out
    assert f"{finer}: validation failed" in printed and "1 validation case(s) failed" in printed
    assert not (folder / f"{finer}.nii.gz").exists()
    summary = json.loads((folder / "summary.json").read_text())
    assert sorted(Path(c["prediction_file"]).name for c in summary["metric_per_case"]) == [
        f"{c}.nii.gz" for c in VALIDATION_CASES if c != finer]
    for case in VALIDATION_CASES:
        if case != finer:
            np.testing.assert_array_equal(_labels(folder / f"{case}.nii.gz"),
                                          _labels(nnunet_validation / f"{case}.nii.gz"))


@pytest.mark.slow
def test_plain_nnunet_trainer_gets_the_bounded_validation_by_name(trained, nnunet_validation):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name("nnUNetTrainer_BoundedVal")
    assert cls.__mro__[1:3] == (BoundedValidation, nnUNetTrainer) and pickle.loads(pickle.dumps(cls)) is cls
    trainer = _trainer(*trained, cls=cls)  # the same checkpoint, in nnUNetTrainer_BoundedVal's own folder
    folder = Path(trainer.output_folder) / "validation"
    assert "nnUNetTrainer_BoundedVal__" in str(folder)
    trainer.perform_actual_validation(save_probabilities=False)
    for case in VALIDATION_CASES:
        np.testing.assert_array_equal(_labels(folder / f"{case}.nii.gz"),
                                      _labels(nnunet_validation / f"{case}.nii.gz"))


def test_every_nnunet_trainer_has_a_bounded_variant(nnunet_env):
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring,
    )
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ctorg.training import bounded_variants

    cls = recursive_find_trainer_class_by_name("nnUNetTrainerNoMirroring_BoundedVal")
    assert cls.__mro__[1:3] == (BoundedValidation, nnUNetTrainerNoMirroring)
    assert cls.__module__ == "nnunet_ctorg.training.bounded_variants"
    assert bounded_variants.nnUNetTrainerNoMirroring_BoundedVal is cls
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert bounded_variants.bounded_variant(ours.CTOrgIOUTrainer).__mro__[1] is ours.CTOrgIOUTrainer
    for missing in ("NoSuchTrainer_BoundedVal", "_BoundedVal", "nnUNetTrainer"):
        assert not hasattr(bounded_variants, missing)
    with pytest.raises(ValueError, match="not an nnU-Net trainer"):
        bounded_variants.bounded_variant(dict)


def test_every_trainer_of_the_package_validates_bounded():
    from nnunet_ctorg.training.variants import demo_budgets, reliability_candidates

    checked = 0
    for module in (ours, demo_budgets, reliability_candidates):
        for name, cls in vars(module).items():
            if isinstance(cls, type) and issubclass(cls, nnUNetTrainer) and cls.__module__ == module.__name__:
                assert issubclass(cls, BoundedValidation), name
                checked += 1
    assert checked == 19


@pytest.mark.parametrize("value, expected", [("12", 12.0), (" 0.5 ", 0.5)])
def test_budget_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(VALIDATION_RAM_VARIABLE, value)
    assert validation_ram_budget_gb() == expected


@pytest.mark.parametrize("value", ["lots", "0", "-2", "nan"])
def test_bad_budget_is_refused_with_its_value(monkeypatch, value):
    monkeypatch.setenv(VALIDATION_RAM_VARIABLE, value)
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        validation_ram_budget_gb()


def test_default_budget_is_this_process_plus_most_of_the_available_memory(monkeypatch):
    from nnunet_ctorg.inference.chunk_budgets import current_rss_gb
    from nnunet_ctorg.training import validation

    monkeypatch.delenv(VALIDATION_RAM_VARIABLE, raising=False)
    monkeypatch.setattr(validation, "available_memory_gb", lambda: 10.0)
    budget = validation_ram_budget_gb()
    assert abs(budget - (current_rss_gb() + 7.0)) < 0.5


def test_available_memory_is_read_from_meminfo():
    from nnunet_ctorg.training.validation import available_memory_gb

    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) / 1024**2
    assert 0 < available_memory_gb() <= total


def test_metrics_workers_fit_the_budget():
    voxels = 100 * 2**20
    per_worker = 0.4 + 12.0 * voxels / 1024**3  # imports, then the reference, the prediction and one label's masks
    assert metrics_processes(voxels, 2.0 + 3.5 * per_worker, 2.0, 8) == 3
    assert metrics_processes(voxels, 2.0 + 0.5 * per_worker, 2.0, 8) == 1  # never none
    assert metrics_processes(voxels, 1000.0, 2.0, 8) == 8


class _Cascade(BoundedValidation):
    """A trainer without ``__init__``: only what the fallback decision reads."""


@pytest.mark.parametrize("what, why", [("cascade", "cascade"), ("regions", "region-based"),
                                       ("next_stage", "next stage"), ("refused", "spline order 3")])
def test_unsupported_models_fall_back_to_nnunets_validation_with_a_log_line(monkeypatch, what, why):
    from types import SimpleNamespace

    trainer = _Cascade.__new__(_Cascade)
    trainer.is_cascaded = what == "cascade"
    trainer.configuration_manager = SimpleNamespace(next_stage_names=["3d_cascade_fullres"] if what == "next_stage"
                                                    else None)
    trainer.label_manager = SimpleNamespace(has_regions=what == "regions")
    logged, calls = [], []
    trainer.print_to_log_file = lambda *args, **kwargs: logged.append(" ".join(map(str, args)))

    def refused(self, settings):
        raise ValueError("the plans resample probabilities with spline order 3 (order_z 0); chunked prediction "
                         "exports nnU-Net's default linear resampling (order <= 1) only")

    monkeypatch.setattr(_Cascade, "_chunked_predictor", refused)
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", lambda self, save: calls.append(save))
    trainer.perform_actual_validation(True)
    assert calls == [True]
    assert len(logged) == 1 and "nnU-Net's own validation runs" in logged[0] and why in logged[0]


def test_a_bad_budget_is_an_error_not_a_fallback(monkeypatch):
    trainer = _Cascade.__new__(_Cascade)
    trainer.is_cascaded = False
    from types import SimpleNamespace

    trainer.configuration_manager = SimpleNamespace(next_stage_names=None)
    trainer.label_manager = SimpleNamespace(has_regions=False)
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", lambda self, save: pytest.fail("fell back"))
    monkeypatch.setenv(VALIDATION_RAM_VARIABLE, "8GB")
    with pytest.raises(ValueError, match="nnUNet_ctorg_val_max_ram_gb must be a number of GB, got '8GB'"):
        trainer.perform_actual_validation(False)


def test_validation_chunks_and_budgets_come_from_the_environment(monkeypatch):
    from nnunet_ctorg.training.validation import VALIDATION_CHUNK_MM, VALIDATION_GPU_VARIABLE

    monkeypatch.setenv(VALIDATION_RAM_VARIABLE, "6")
    monkeypatch.setenv(VALIDATION_GPU_VARIABLE, "20")
    settings = BoundedValidation._chunk_settings()
    assert (settings.chunk_mm, settings.max_ram_gb, settings.max_gpu_gb) == (VALIDATION_CHUNK_MM, 6.0, 20.0)
    assert settings.budget_name == VALIDATION_RAM_VARIABLE and VALIDATION_CHUNK_MM == 100.0
    monkeypatch.delenv(VALIDATION_GPU_VARIABLE)
    assert BoundedValidation._chunk_settings().max_gpu_gb is None  # the default: 90 % of the free GPU memory
