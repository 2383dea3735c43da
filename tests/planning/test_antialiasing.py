"""Anti-aliased resampling, the isotropic planner and its command, training and prediction with it."""

import json
import os
import subprocess

import numpy as np
import pytest
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

from nnunet_ctorg.planning.antialiasing import (
    ANTIALIASING_KEY,
    AntiAliasedConfigurationManager,
    antialiasing_sigma,
    resample_data_antialiased,
    with_antialiasing,
)
from tests.conftest import nnunet_command


def test_sigma_per_axis_and_zero_when_upsampling():
    sigma = antialiasing_sigma((0.7, 0.7, 2.5), (3.0, 3.0, 3.0))
    assert np.allclose(sigma, [(3 / 0.7 - 1) / 3, (3 / 0.7 - 1) / 3, (3 / 2.5 - 1) / 3])
    assert np.array_equal(antialiasing_sigma((3.0, 5.0, 1.0), (3.0, 3.0, 3.0)), [0.0, 0.0, 2 / 3])
    assert np.allclose(antialiasing_sigma((1.0, 1.0, 1.0), (4.0, 4.0, 4.0), sigma_factor=0.5), 1.5)
    with pytest.raises(ValueError, match="-1"):
        antialiasing_sigma((1.0, -1.0, 1.0), (3.0, 3.0, 3.0))


def _stripes(shape, spacing, period_mm):
    z = np.arange(shape[0]) * spacing[0]
    return np.broadcast_to(np.sin(2 * np.pi * z / period_mm)[:, None, None], shape)[None].astype(np.float32)


@pytest.mark.parametrize("period_mm", [1.6, 2.0, 2.5])
def test_energy_above_the_target_nyquist_is_suppressed_against_nnunets_default(period_mm):
    """Stripes of period < 6 mm at 0.7 mm spacing cannot exist at 3 mm (Nyquist period 6 mm): what is left is alias.

    The paper's sigma (0.77 mm here) damps a sinusoid by exp(-2 pi^2 sigma^2 f^2): 20x at 2 mm, but only 2x
    at 4 mm, close to the target Nyquist period; the test covers the band the filter is meant for.
    """
    spacing, target = (0.7, 0.7, 0.7), (3.0, 3.0, 3.0)
    data = _stripes((300, 8, 8), spacing, period_mm=period_mm)
    new_shape = compute_new_shape(data.shape[1:], spacing, target)
    plain = resample_data_or_seg_to_shape(data, new_shape, spacing, target)
    ours = resample_data_antialiased(data, new_shape, spacing, target)
    assert plain.shape == ours.shape == (1, *new_shape)
    assert plain.std() > 0.3  # nnU-Net's resampling folds the stripes into a strong low-frequency pattern
    assert ours.std() < 0.2 * plain.std()


def test_content_below_the_target_nyquist_survives():
    spacing, target = (0.7, 0.7, 0.7), (3.0, 3.0, 3.0)
    data = _stripes((300, 8, 8), spacing, period_mm=40.0)  # well below 3 mm's Nyquist frequency
    new_shape = compute_new_shape(data.shape[1:], spacing, target)
    ours = resample_data_antialiased(data, new_shape, spacing, target)
    plain = resample_data_or_seg_to_shape(data, new_shape, spacing, target)
    assert plain.std() > 0.6 and np.abs(ours - plain).max() < 0.03  # the filter only damps what 3 mm cannot hold


def test_upsampling_is_nnunets_resampling_unchanged():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 10, 12, 14)).astype(np.float32)
    new_shape = compute_new_shape(data.shape[1:], (3.0, 3.0, 3.0), (1.5, 1.5, 1.5))
    assert np.array_equal(resample_data_antialiased(data, new_shape, (3.0,) * 3, (1.5,) * 3),
                          resample_data_or_seg_to_shape(data, new_shape, (3.0,) * 3, (1.5,) * 3))


@pytest.fixture(scope="module")
def planned_3mm(module_nnunet_env):
    """Six 2 mm phantoms planned and preprocessed by our command with an added 6 mm configuration."""
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.phantoms.cli import generate_dataset

    src = module_nnunet_env / "ctorg"
    generate_dataset("ctorg", str(src), 5, "abdomen", (4.0, 4.0, 4.0), first_id=21, progress=False)
    generate_dataset("ctorg", str(src), 1, "abdomen", (4.0, 4.0, 4.0), first_id=0, progress=False)
    raw = convert_ctorg_dataset(src, module_nnunet_env / "nnUNet_raw", 993, "AntiAliased")
    proc = subprocess.run([nnunet_command("nnunet_ctorg_plan_and_preprocess"), "-d", "993", "--spacing", "8",
                           "-c", "3d_8mm", "-np", "1", "-npfp", "1", "--no_pbar"],
                          capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return raw, module_nnunet_env / "nnUNet_preprocessed" / raw.name


def test_plans_are_written_next_to_nnunets_and_load_in_nnunet(planned_3mm):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    raw, preprocessed = planned_3mm
    plans = PlansManager(str(preprocessed / "nnUNetPlans.json"))
    assert {"3d_fullres", "3d_8mm"} <= set(plans.available_configurations)
    cm = plans.get_configuration("3d_8mm")
    assert cm.spacing == [8.0, 8.0, 8.0]
    assert cm.configuration[ANTIALIASING_KEY] == {"sigma_factor": pytest.approx(1 / 3)}
    assert cm.resampling_fn_data is not None  # nnU-Net resolves its own function name
    fullres = plans.get_configuration("3d_fullres")
    assert all(a <= b for a, b in zip(cm.patch_size, fullres.patch_size))
    assert (preprocessed / "gt_segmentations").is_dir()


def test_preprocessed_data_is_smoothed_before_downsampling(planned_3mm):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ctorg.planning.antialiasing import AntiAliasedPreprocessor

    raw, preprocessed = planned_3mm
    plans = PlansManager(str(preprocessed / "nnUNetPlans.json"))
    cm = plans.get_configuration("3d_8mm")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    files = [str(raw / "imagesTr" / "ctorg_021_0000.nii.gz")]
    ours, seg_ours, _ = AntiAliasedPreprocessor(verbose=False).run_case(
        files, str(raw / "labelsTr" / "ctorg_021.nii.gz"), plans, cm, dataset_json)
    theirs, seg_theirs, _ = DefaultPreprocessor(verbose=False).run_case(
        files, str(raw / "labelsTr" / "ctorg_021.nii.gz"), plans, cm, dataset_json)
    assert ours.shape == theirs.shape and np.array_equal(seg_ours, seg_theirs)  # labels as nnU-Net
    assert not np.allclose(ours, theirs)
    # smoothing lowers the voxel-to-voxel differences (the high frequencies) of the downsampled image
    assert np.abs(np.diff(ours, axis=1)).mean() < np.abs(np.diff(theirs, axis=1)).mean()


@pytest.mark.slow
def test_training_and_prediction_with_the_added_configuration(planned_3mm, module_nnunet_env):
    import SimpleITK as sitk

    raw, _ = planned_3mm
    env = dict(os.environ)

    def run(*cmd):
        proc = subprocess.run([nnunet_command(cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run("nnUNetv2_train", "993", "3d_8mm", "0", "-tr", "CTOrgIOUTrainer_tiny", "-device", "cpu")
    image = sitk.ReadImage(str(raw / "imagesTs" / "ctorg_000_0000.nii.gz"))
    for command, out in (("nnUNetv2_predict", "pred_nnunet"), ("nnunet_ctorg_predict_chunked", "pred_chunked")):
        run(command, "-i", str(raw / "imagesTs"), "-o", str(module_nnunet_env / out), "-d", "993", "-c", "3d_8mm",
            "-f", "0", "-tr", "CTOrgIOUTrainer_tiny", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1",
            *(["--no_body_crop"] if out == "pred_chunked" else []))  # every voxel compared below
        pred = sitk.ReadImage(str(module_nnunet_env / out / "ctorg_000.nii.gz"))
        assert pred.GetSize() == image.GetSize() and np.allclose(pred.GetSpacing(), image.GetSpacing())

    # the README's Python route: nnU-Net's predictor with the wrapped configuration applies the filter
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model = module_nnunet_env / "nnUNet_results" / raw.name / "CTOrgIOUTrainer_tiny__nnUNetPlans__3d_8mm"
    probabilities = {}
    for wrapped in (False, True):
        predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model), (0,))
        if wrapped:
            predictor.configuration_manager = with_antialiasing(predictor.configuration_manager)
        out = module_nnunet_env / f"pred_python_{wrapped}"
        predictor.predict_from_files(str(raw / "imagesTs"), str(out), save_probabilities=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
        probabilities[wrapped] = np.load(out / "ctorg_000.npz")["probabilities"]
    assert not np.allclose(probabilities[True], probabilities[False])  # the filter changed the network's input
    chunked = sitk.GetArrayFromImage(sitk.ReadImage(str(module_nnunet_env / "pred_chunked" / "ctorg_000.nii.gz")))
    python = sitk.GetArrayFromImage(sitk.ReadImage(str(module_nnunet_env / "pred_python_True" / "ctorg_000.nii.gz")))
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(module_nnunet_env / "pred_python_False" / "ctorg_000.nii.gz")))
    # same labels as the chunked command up to its chunk seams (0.99999 when measured; plain: 0.967)
    assert (python == chunked).mean() > 0.999 and (python == chunked).mean() >= (plain == chunked).mean()


def test_configuration_manager_switches_on_only_with_the_plans_key(planned_3mm):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    plans = PlansManager(str(planned_3mm[1] / "nnUNetPlans.json"))
    plain = plans.get_configuration("3d_fullres")
    assert with_antialiasing(plain) is plain
    configuration = dict(plans.get_configuration("3d_8mm").configuration)
    configuration[ANTIALIASING_KEY] = {"sigma_factor": 0.5}
    smoothed = with_antialiasing(ConfigurationManager(configuration))
    assert isinstance(smoothed, AntiAliasedConfigurationManager)
    assert smoothed.resampling_fn_data.keywords["sigma_factor"] == 0.5


def test_command_refuses_an_unknown_dataset_in_one_line(nnunet_env):
    proc = subprocess.run([nnunet_command("nnunet_ctorg_plan_and_preprocess"), "-d", "999"], capture_output=True,
                          text=True, env=dict(os.environ))
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0
    assert "no dataset with id 999" in proc.stderr


def test_an_inheriting_configuration_keeps_the_filter_and_null_switches_it_off(planned_3mm):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((planned_3mm[1] / "nnUNetPlans.json").read_text())
    plans["configurations"]["3d_8mm_small"] = {"inherits_from": "3d_8mm", "patch_size": [32, 32, 32]}
    plans["configurations"]["3d_8mm_plain"] = {"inherits_from": "3d_8mm", ANTIALIASING_KEY: None}
    manager = PlansManager(plans)
    assert isinstance(with_antialiasing(manager.get_configuration("3d_8mm_small")), AntiAliasedConfigurationManager)
    plain = manager.get_configuration("3d_8mm_plain")
    assert with_antialiasing(plain) is plain
