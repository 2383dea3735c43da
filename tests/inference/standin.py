"""A deterministic stand-in nnU-Net model: real plans, preprocessing, sliding window and export, a fixed conv net.

The network is two seeded 3-D convolutions (receptive field 7 voxels) with a tanh between, so its output
depends on where the tiles fall and on the context each tile sees; any misplaced tile, padding or
resampling sample changes labels.
"""

import numpy as np

INTENSITY = {"0": {"mean": 40.0, "std": 180.0, "percentile_00_5": -1000.0, "percentile_99_5": 1400.0,
                   "median": 40.0, "min": -1024.0, "max": 3000.0}}


def standin_plans(spacing=(2.0, 1.6, 1.6), patch=(24, 32, 32), transpose=(0, 1, 2), normalization="CTNormalization",
                  order=3, order_z=0, probabilities_order=1, antialiasing=None) -> dict:
    configuration = {
        "data_identifier": "standin", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": [100, 100, 100], "spacing": list(spacing),
        "normalization_schemes": [normalization], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": order, "order_z": order_z, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": probabilities_order, "order_z": 0,
                                               "force_separate_z": None},
        "batch_dice": False, "architecture": {"network_class_name": "standin", "arch_kwargs": {},
                                              "_kw_requires_import": []}}
    if antialiasing is not None:
        configuration["antialiasing"] = {"sigma_factor": antialiasing}
    backward = list(np.argsort(transpose))
    return {"dataset_name": "Dataset999_Standin", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [100] * 3,
            "image_reader_writer": "SimpleITKIO", "transpose_forward": list(transpose),
            "transpose_backward": [int(b) for b in backward], "configurations": {"3d": configuration},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": INTENSITY}


LABELS = {"background": 0, "liver": 1, "lungs": 2, "bones": 3}


def standin_network(n_classes: int = 4, seed: int = 0, two_d: bool = False):
    import torch

    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if two_d else torch.nn.Conv3d
    net = torch.nn.Sequential(conv(1, 6, 5, padding=2), torch.nn.Tanh(), conv(6, n_classes, 3, padding=1))
    with torch.no_grad():
        for m in net:
            if isinstance(m, conv):
                m.weight.mul_(3.0)
    return net.eval()


def standin_predictor(plans: dict | None = None, folds: int = 1, mirroring: bool = False, step_size: float = 0.5,
                      n_classes: int = len(LABELS)):
    """An ``nnUNetPredictor`` on the CPU with the stand-in network and ``folds`` different parameter sets."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = plans or standin_plans()
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d")
    two_d = len(cm.patch_size) == 2
    labels = LABELS if n_classes == len(LABELS) else {"background": 0, **{f"class{i}": i for i in range(1, n_classes)}}
    net = standin_network(n_classes, 0, two_d)
    parameters = [standin_network(n_classes, f, two_d).state_dict() for f in range(folds)]
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, parameters, {"labels": labels, "channel_names": {"0": "CT"},
                                                              "file_ending": ".nii.gz", "numTraining": 1},
                                    "nnUNetTrainer", (0, 1, 2) if not two_d else (0, 1))
    return predictor


def nnunet_labels(predictor, image) -> np.ndarray:
    """``nnUNetv2_predict``'s labels for a SimpleITK image (as SimpleITKIO reads it).

    A configuration planned with anti-aliasing is preprocessed with it (as our preprocessing command does).
    """
    import SimpleITK as sitk

    from nnunet_ctorg.planning.antialiasing import with_antialiasing

    data = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    props = {"spacing": list(image.GetSpacing()[::-1])}
    plain = predictor.configuration_manager
    predictor.configuration_manager = with_antialiasing(plain)
    try:
        return predictor.predict_single_npy_array(data, props)
    finally:
        predictor.configuration_manager = plain
