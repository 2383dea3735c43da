"""Trainers built on the ``planned_dataset`` fixture, as ``nnUNetv2_train`` builds them (no network yet)."""

import json
from pathlib import Path

import torch


def make_trainer(cls, raw_dataset: Path, preprocessed: Path, device: str = "cpu", plans_update: dict | None = None,
                 **configuration):
    """``cls`` for 3d_fullres fold 0, with ``configuration`` overriding the planned 3d_fullres settings."""
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans.update(plans_update or {})
    plans["configurations"]["3d_fullres"].update(configuration)
    plans["continue_training"] = False  # nnU-Net 2.8's run_training passes this through the plans
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    return cls(plans, "3d_fullres", 0, dataset_json, device=torch.device(device))


def training_transforms(trainer):
    """The trainer's CPU training transforms and the loader's crop size, as nnU-Net's ``get_dataloaders`` asks."""
    configured = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    rotation, dummy_2d, initial_patch, mirror_axes = configured
    lm = trainer.label_manager
    transforms = trainer.get_training_transforms(
        trainer.configuration_manager.patch_size, rotation, trainer._get_deep_supervision_scales(), mirror_axes,
        dummy_2d, use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=False,
        foreground_labels=lm.foreground_labels, regions=None, ignore_label=lm.ignore_label)
    return transforms, initial_patch
