"""nnU-Net trainers of nnunet-ctorg that a user selects with ``-tr``.

The classes live here, in the installed package, so that they can be pickled (nnU-Net's
data-loader workers and checkpoints refer to them by module path). The folder printed by
``nnunet_ctorg_env`` only re-exports them for nnU-Net's ``nnUNet_extTrainer`` lookup. The demo's
budgets and the reliability benchmark's candidates are in :mod:`nnunet_ctorg.training.variants`.
"""

import os
import random
from typing import ClassVar

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_ctorg.augmentation import (
    AugmentationParameters,
    DeviceAugmentation,
    augmentation_crop_size,
    build_device_augmentation,
    ct_channel_statistics,
)
from nnunet_ctorg.augmentation.prefetch import DevicePrefetcher
from nnunet_ctorg.training.loss.iou import SoftIoULoss
from nnunet_ctorg.training.validation import BoundedValidation

SEED_ENVIRONMENT_VARIABLE = "nnUNet_ctorg_seed"


def seed_from_environment() -> int | None:
    """The training seed set in ``nnUNet_ctorg_seed``, or ``None`` when it is unset or empty."""
    value = os.environ.get(SEED_ENVIRONMENT_VARIABLE, "").strip()
    if not value:
        return None
    try:
        seed = int(value)
    except ValueError:
        raise ValueError(f"{SEED_ENVIRONMENT_VARIABLE} must be a non-negative integer, got {value!r}") from None
    if not 0 <= seed < 2**32:
        raise ValueError(f"{SEED_ENVIRONMENT_VARIABLE} must be in [0, 2**32), got {value!r}")
    return seed


class SeededTraining(BoundedValidation):
    """Repeatable training when ``nnUNet_ctorg_seed`` is set (nnU-Net itself never seeds).

    Seeds Python's, NumPy's and torch's generators before the network is built, and replaces
    nnU-Net's data-loader workers (unseeded, batches taken in whichever order they finish) by
    one seeded worker per loader, whose batches arrive in a fixed order; ``CTOrgIOUTrainer`` seeds
    its device augmentation too. With ``nnUNet_n_proc_DA=0`` the loaders run in the main process and
    the global seed covers them. DDP ranks share the network seed and get their own data seeds. On a
    CPU a seeded run repeats exactly; CUDA kernels may still differ in the last bits. A run continued
    with ``--c`` is reseeded, so it does not repeat an uninterrupted one. Unset, training is nnU-Net's,
    unseeded. The final validation is :class:`~nnunet_ctorg.training.validation.BoundedValidation`'s.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.training_seed = seed_from_environment()
        if self.training_seed is not None:
            # the same network on every DDP rank (DDP broadcasts rank 0's anyway), other batches per rank
            torch.manual_seed(self.training_seed)
            rank_seed = self._rank_seed(0)
            random.seed(rank_seed)
            np.random.seed(rank_seed)

    def _rank_seed(self, stream: int) -> int:
        """A 32-bit seed for random stream ``stream`` of this DDP rank, derived from the training seed."""
        return int(np.random.SeedSequence([self.training_seed, self.local_rank, stream]).generate_state(1)[0])

    def get_dataloaders(self):
        train, val = super().get_dataloaders()
        if self.training_seed is None:
            return train, val
        replace = isinstance(train, NonDetMultiThreadedAugmenter)
        self.print_to_log_file(f"seeded training ({SEED_ENVIRONMENT_VARIABLE}={self.training_seed}): "
                               + ("one seeded data-loader worker per loader" if replace else "loaders in this process"))
        if not replace:
            return train, val
        seeded = []
        for offset, loader in enumerate((train, val)):
            loader._finish()
            seeded.append(NonDetMultiThreadedAugmenter(
                data_loader=loader.generator, transform=None, num_processes=1, num_cached=6,
                seeds=[self._rank_seed(1 + offset)], pin_memory=self.device.type == "cuda",
                wait_time=0.002))
            _ = next(seeded[-1])
        return tuple(seeded)


class CTOrgIOUTrainer(SeededTraining):
    """nnU-Net with the soft IOU loss of Rister et al. (in log form, over the batch, over the classes present in
    the batch) in place of Dice + CE.

    Deep supervision, its weights (1/2^i, lowest output 0, normalised), the ignore label and
    ``torch.compile`` behave exactly as in ``nnUNetTrainer``; only the criterion changes.
    Class attributes set the loss, so a variant changes them without touching a hook:

    - ``iou_do_bg``: average the IOU over background too (paper default ``True``);
    - ``iou_power``: the exponent m of the eq. 8 family (paper default 1);
    - ``iou_log``: minimise the class mean of ``-log IoU`` (default) instead of the paper's ``1 - IoU``:
      the same optimum, but the pull on a class the softmax has pushed towards zero stays of order
      1/|class| per voxel instead of vanishing with p (with ``1 - IoU`` the benchmark lost the lungs
      in 1 of 3 seeds and the kidneys in 2 of 3);
    - ``iou_over_batch``: one IOU per class over the whole batch (default), as eq. 5 sums over all
      the voxels of an iteration; ``None`` follows the plans' ``batch_dice`` (``False`` for
      3d_fullres: one IOU per example, where a class absent from an example earns its whole term
      only by predicting nothing there — ``CTOrgIOUTrainer_plainIOU``);
    - ``iou_skip_absent``: leave the classes absent from the batch's reference out of the class mean
      (default): their term only pushes the class down everywhere, and with ``-log IoU`` that push
      outlasted the pull of the batches holding a rare class, which then died (the bladder, in 2 of
      3 seeds before);
    - ``ce_weight``: weight of an added cross-entropy term (0 = IOU only);
    - ``ce_warmup_epochs``: > 0 adds cross-entropy with weight 1 decaying linearly to ``ce_weight``.

    ``benchmarks/trainer_reliability.py`` chose the defaults (docs/training.md, "Reliability of the trainers").

    Augmentation runs on the training device (paper 003 §IV): the data-loader workers only load
    and crop the enlarged patch, ``train_step`` warps, crops and augments the whole batch where it
    lies and builds the deep-supervision targets there (``nnunet_ctorg.augmentation``); on CUDA the next
    batch is copied while the current one trains (``DevicePrefetcher``). Ranges and
    probabilities: ``augmentation_parameters``; ``augmentation_start_epoch`` > 0 trains on plain
    crops first, as the paper did (default 0: nnU-Net's habit). Configurations the device pipeline does not cover
    (2-D, cascade, masked normalisation) fall back to nnU-Net's CPU augmentation, with a log line.
    Validation batches are not augmented.
    """

    iou_do_bg: bool = True
    iou_power: float = 1.0
    iou_log: ClassVar[bool] = True
    iou_over_batch: ClassVar[bool | None] = True  # None: the plans' batch_dice
    iou_skip_absent: ClassVar[bool] = True
    ce_weight: float = 0.0
    ce_warmup_epochs: ClassVar[int] = 0  # > 0: CE weight decays linearly from 1 to ce_weight over these epochs
    augment_on_device: ClassVar[bool] = True
    augmentation_parameters: ClassVar[AugmentationParameters] = AugmentationParameters()
    augmentation_start_epoch: ClassVar[int] = 0
    device_augmentation: DeviceAugmentation | None = None
    device_crop: DeviceAugmentation | None = None  # crop and targets only, before augmentation_start_epoch

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None) -> BasicTransform | None:
        """CPU side of the augmentation: nothing (the loader crops) when the device pipeline applies."""
        reason = self._device_augmentation_unsupported(patch_size, use_mask_for_norm, is_cascaded)
        if reason is not None:
            if self.augment_on_device:
                self.print_to_log_file(f"device augmentation not used ({reason}): nnU-Net's CPU augmentation")
            self.device_augmentation = None
            return super().get_training_transforms(
                patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
                use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label)
        statistics = ct_channel_statistics(self.configuration_manager.normalization_schemes,
                                           self.plans_manager.foreground_intensity_properties_per_channel)
        seeds = (None, None) if self.training_seed is None else (self._rank_seed(3), self._rank_seed(4))
        self.device_augmentation, self.device_crop = (build_device_augmentation(
            parameters, patch_size, statistics, rotation=self._max_rotation(rotation_for_DA),
            in_plane_only=bool(do_dummy_2d_data_aug), mirror_axes=mirror_axes,
            cranio_caudal_axis=list(self.plans_manager.transpose_forward).index(0),
            deep_supervision_scales=deep_supervision_scales, regions=regions, ignore_label=ignore_label,
            spacing=self.configuration_manager.spacing, seed=seed)
            for parameters, seed in zip((self.augmentation_parameters, AugmentationParameters.disabled()), seeds))
        self.print_to_log_file(f"augmentation on {self.device}: {self.augmentation_parameters}")
        return None

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's settings, with the loader's crop sized from our ranges when the device pipeline applies."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = self.configuration_manager.patch_size
        if self._device_augmentation_unsupported(patch_size, self.configuration_manager.use_mask_for_norm,
                                                 self.is_cascaded) is None:
            initial_patch_size = augmentation_crop_size(
                self.augmentation_parameters, patch_size, self._max_rotation(rotation), bool(dummy_2d),
                self.configuration_manager.spacing)
            self.print_to_log_file(f"loader crop sized for the device augmentation: {initial_patch_size}")
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    @staticmethod
    def _max_rotation(rotation_for_DA) -> float:
        if isinstance(rotation_for_DA, (tuple, list)):
            return max(abs(float(r)) for r in rotation_for_DA)
        return abs(float(rotation_for_DA))

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.device_augmentation is not None and self.device.type == "cuda":
            self.dataloader_train = DevicePrefetcher(self.dataloader_train, self.device)

    def on_train_end(self) -> None:
        if isinstance(self.dataloader_train, DevicePrefetcher):
            self.dataloader_train = self.dataloader_train.loader  # nnU-Net shuts its own generator down
        super().on_train_end()

    def _device_augmentation_unsupported(self, patch_size, use_mask_for_norm, is_cascaded) -> str | None:
        if not self.augment_on_device:
            return "augment_on_device is False"
        if len(patch_size) != 3:
            return "2-D configuration"
        if is_cascaded:
            return "cascade"
        if use_mask_for_norm is not None and any(use_mask_for_norm):
            return "normalisation inside a mask"
        return None

    def train_step(self, batch: dict) -> dict:
        if self.device_augmentation is not None:
            # paper 003 §VI-C: train without augmentation first, then introduce it
            pipeline = self.device_augmentation if self.current_epoch >= self.augmentation_start_epoch \
                else self.device_crop
            data, target = pipeline(batch["data"].to(self.device, non_blocking=True),
                                    batch["target"].to(self.device, non_blocking=True))
            batch = {**batch, "data": data, "target": target}
        return super().train_step(batch)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.ce_warmup_epochs > 0:
            criterion = self.loss.loss if isinstance(self.loss, DeepSupervisionWrapper) else self.loss
            criterion.weight_ce = self.ce_weight_at(self.current_epoch)
            self.print_to_log_file(f"cross-entropy weight {criterion.weight_ce:.3f}")

    def ce_weight_at(self, epoch: int) -> float:
        """Cross-entropy weight of ``epoch``: 1 -> ``ce_weight`` linearly over ``ce_warmup_epochs``."""
        if self.ce_warmup_epochs <= 0:
            return self.ce_weight
        fraction = min(epoch / self.ce_warmup_epochs, 1.0)
        return (1 - fraction) * 1.0 + fraction * self.ce_weight

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
            "batch_dice": self.configuration_manager.batch_dice if self.iou_over_batch is None
            else self.iou_over_batch,
            "do_bg": self.iou_do_bg,
            "smooth": 1e-5,
            "ddp": self.is_ddp,
            "power": self.iou_power,
            "log": self.iou_log,
            "skip_absent": self.iou_skip_absent,
        }
        if self.label_manager.has_regions:
            criterion = DC_and_BCE_loss(
                {}, iou_kwargs, weight_ce=self.ce_weight_at(0), weight_dice=1,
                use_ignore_label=self.label_manager.ignore_label is not None, dice_class=SoftIoULoss,
            )
        else:
            criterion = DC_and_CE_loss(
                iou_kwargs, {}, weight_ce=self.ce_weight_at(0), weight_dice=1,
                ignore_label=self.label_manager.ignore_label, dice_class=SoftIoULoss,
            )
        if self._do_i_compile():
            criterion.dc = torch.compile(criterion.dc)
        return criterion


class CTOrgIOUCETrainer(CTOrgIOUTrainer):
    """IOU + cross-entropy (weights 1:1), nnU-Net's Dice+CE recipe with IOU for Dice; for comparison.

    As nnU-Net's Dice, the IOU is per example or over the batch as the plans' ``batch_dice`` says, over
    every class.
    """

    iou_log = False
    iou_over_batch = None
    iou_skip_absent = False
    ce_weight = 1.0
    ce_warmup_epochs = 0


class CTOrgIOUTrainer_plainIOU(CTOrgIOUTrainer):
    """The paper's loss as written: ``1 - IoU`` per example (the plans' ``batch_dice``) over every class, no
    cross-entropy."""

    iou_log = False
    iou_over_batch = None
    iou_skip_absent = False
    ce_weight = 0.0
    ce_warmup_epochs = 0


class CTOrgIOUTrainer_nnUNetDA(CTOrgIOUTrainer):
    """IOU loss with nnU-Net's CPU augmentation in the data-loader workers (ablation of the device pipeline)."""

    augment_on_device = False


class CTOrgIOUTrainer_NoDA(CTOrgIOUTrainer):
    """IOU loss without augmentation, as ``nnUNetTrainerNoDA``: patch-sized crops, no mirroring (ablation)."""

    augment_on_device = False

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None) -> BasicTransform:
        return self.get_validation_transforms(deep_supervision_scales, is_cascaded, foreground_labels, regions,
                                              ignore_label)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, _, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, self.configuration_manager.patch_size, None


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
