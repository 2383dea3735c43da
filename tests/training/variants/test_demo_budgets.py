"""The demo's budget: mirroring only in training, augmentation after the plain-crop epochs."""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ctorg.training import trainers as ours
from nnunet_ctorg.training.variants import demo_budgets as demo
from tests.training.trainer_setup import make_trainer, training_transforms


def test_demo_trainer_mirrors_in_training_but_not_at_inference(planned_dataset):
    trainer = make_trainer(demo.CTOrgIOUTrainer_demo, *planned_dataset)
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes is not None and len(mirror_axes) == 3
    assert trainer.inference_allowed_mirroring_axes is None
    plain = make_trainer(ours.CTOrgIOUTrainer, *planned_dataset)
    plain.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert plain.inference_allowed_mirroring_axes == mirror_axes


def test_demo_trainer_trains_on_plain_crops_before_augmentation_starts(planned_dataset, monkeypatch):
    trainer = make_trainer(demo.CTOrgIOUTrainer_demo, *planned_dataset)
    _, initial_patch = training_transforms(trainer)
    used = []
    trainer.device_augmentation = lambda image, labels: used.append("augmented") or (image, labels)
    trainer.device_crop = lambda image, labels: used.append("plain") or (image, labels)
    monkeypatch.setattr(nnUNetTrainer, "train_step", lambda self, batch: {"loss": 0.0})  # no network step here
    batch = {"data": torch.zeros((1, 1, *initial_patch)), "target": torch.zeros((1, 1, *initial_patch))}
    for epoch in (0, trainer.augmentation_start_epoch - 1, trainer.augmentation_start_epoch):
        trainer.current_epoch = epoch
        trainer.train_step(batch)
    assert used == ["plain", "plain", "augmented"]
    assert 0 < trainer.augmentation_start_epoch < trainer.num_epochs


def test_the_budget_says_its_epochs_before_the_trainer_is_built(planned_dataset):
    for cls, epochs in ((demo.CTOrgIOUTrainer_demo, 45), (demo.nnUNetTrainer_CTOrgDemo3x, 135)):
        trainer = make_trainer(cls, *planned_dataset)
        assert cls.budget_epochs() == trainer.num_epochs == epochs, cls.__name__
        assert (trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (16, 2)
