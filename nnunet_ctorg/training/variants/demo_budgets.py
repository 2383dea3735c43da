"""The demo's budget (``DemoBudget``) and the trainers that run at it.

``nnunet_ctorg_demo`` trains ``CTOrgIOUTrainer_demo``; ``benchmarks/trainer_reliability.py`` compares it with
nnU-Net's own trainer at the same budget (``nnUNetTrainer_CTOrgDemo``) and, with the ``3x`` variants, shows what
longer training gives.
"""

from typing import ClassVar

import torch

from nnunet_ctorg.training.trainers import CTOrgIOUTrainer, SeededTraining


class DemoBudget(SeededTraining):
    """The README demo's budget for any trainer: a short CPU run that still learns the large organs.

    45 epochs x 16 iterations (720), 2 validation iterations per epoch, and no mirroring
    test-time augmentation at inference (8x fewer network passes in the final validation and in
    ``nnUNetv2_predict``); training still mirrors. Put it first among the bases. ``budget_factor``
    multiplies the epochs (``benchmarks/trainer_reliability.py`` uses it to show what longer
    training gives).
    """

    budget_factor: ClassVar[int] = 1

    @classmethod
    def budget_epochs(cls) -> int:
        """The epochs this trainer runs (``num_epochs``), known before it is built (the demo's progress)."""
        return 45 * cls.budget_factor

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.budget_epochs()
        self.num_iterations_per_epoch = 16
        self.num_val_iterations_per_epoch = 2

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return configured


class CTOrgIOUTrainer_demo(DemoBudget, CTOrgIOUTrainer):
    """``CTOrgIOUTrainer`` at the demo's budget; as in paper 003 §VI-C, the first third of the epochs
    trains on plain crops and augmentation starts afterwards."""

    augmentation_start_epoch = 15


class CTOrgIOUTrainer_demo3x(CTOrgIOUTrainer_demo):
    """``CTOrgIOUTrainer_demo`` with three times the epochs (135 x 16 iterations), augmentation from epoch 45."""

    budget_factor = 3
    augmentation_start_epoch = 45


class nnUNetTrainer_CTOrgDemo(DemoBudget):
    """nnU-Net's own trainer (Dice + CE, CPU augmentation) at the demo's budget: the reference of
    ``benchmarks/trainer_reliability.py``."""


class nnUNetTrainer_CTOrgDemo3x(nnUNetTrainer_CTOrgDemo):
    """``nnUNetTrainer_CTOrgDemo`` with three times the epochs (135 x 16 iterations)."""

    budget_factor = 3
