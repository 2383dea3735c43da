"""nnU-Net trainers of nnunet-ctorg.

The classes live here, in the installed package, so that they can be pickled (nnU-Net's
data-loader workers and checkpoints refer to them by module path). The folder printed by
``nnunet_ctorg_env`` only re-exports them for nnU-Net's ``nnUNet_extTrainer`` lookup.
"""

import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_ctorg.training.loss.iou import SoftIoULoss


class CTOrgIOUTrainer(nnUNetTrainer):
    """nnU-Net with the soft IOU loss of Rister et al. in place of Dice + cross-entropy.

    Deep supervision, its weights (1/2^i, lowest output 0, normalised), the ignore label and
    ``torch.compile`` behave exactly as in ``nnUNetTrainer``; only the criterion changes.
    Class attributes set the loss, so a variant changes them without touching a hook:

    - ``iou_do_bg``: average the IOU over background too (paper default ``True``);
    - ``iou_power``: the exponent m of the eq. 8 family (paper default 1);
    - ``ce_weight``: weight of an added cross-entropy term (0 = IOU only).
    """

    iou_do_bg: bool = True
    iou_power: float = 1.0
    ce_weight: float = 0.0

    def _build_loss(self) -> nn.Module:
        loss = super()._build_loss()
        criterion = self._build_iou_criterion()
        if isinstance(loss, DeepSupervisionWrapper):
            loss.loss = criterion  # keep nnU-Net's deep-supervision weights
            return loss
        return criterion

    def _build_iou_criterion(self) -> nn.Module:
        """IOU (+ optional CE) for one output, with nnU-Net's ignore-label handling."""
        iou_kwargs = {
            "batch_dice": self.configuration_manager.batch_dice,
            "do_bg": self.iou_do_bg,
            "smooth": 1e-5,
            "ddp": self.is_ddp,
            "power": self.iou_power,
        }
        if self.label_manager.has_regions:
            criterion = DC_and_BCE_loss(
                {}, iou_kwargs, weight_ce=self.ce_weight, weight_dice=1,
                use_ignore_label=self.label_manager.ignore_label is not None, dice_class=SoftIoULoss,
            )
        else:
            criterion = DC_and_CE_loss(
                iou_kwargs, {}, weight_ce=self.ce_weight, weight_dice=1,
                ignore_label=self.label_manager.ignore_label, dice_class=SoftIoULoss,
            )
        if self._do_i_compile():
            criterion.dc = torch.compile(criterion.dc)
        return criterion


class CTOrgIOUCETrainer(CTOrgIOUTrainer):
    """IOU + cross-entropy (weights 1:1), nnU-Net's Dice+CE recipe with IOU for Dice; for comparison."""

    ce_weight = 1.0


class CTOrgIOUTrainer_5epochs(CTOrgIOUTrainer):
    """Five epochs of 250 iterations: for checking plans and set-ups."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class CTOrgIOUTrainer_tiny(CTOrgIOUTrainer):
    """Two epochs of four iterations: for tests of the training and prediction plumbing."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2


class CTOrgIOUTrainer_demo(CTOrgIOUTrainer):
    """The README demo's budget: a short CPU run that still learns the large organs.

    720 iterations, and no mirroring test-time augmentation at inference (8x fewer network
    passes in the final validation and in ``nnUNetv2_predict``); training still mirrors.
    The first ``ce_warmup_epochs`` epochs add cross-entropy (weight 1) to the IOU loss: with IOU
    alone, a small class (bone) whose soft prediction dies in the first iterations gets almost no
    gradient and never comes back (1 demo run in 5 lost bone that way); afterwards the loss is IOU only.
    """

    ce_warmup_epochs: int = 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 45
        self.num_iterations_per_epoch = 16
        self.num_val_iterations_per_epoch = 2

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return configured

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        criterion = getattr(self.loss, "loss", self.loss)  # inside the deep-supervision wrapper
        criterion.weight_ce = 1.0 if self.current_epoch < self.ce_warmup_epochs else self.ce_weight
