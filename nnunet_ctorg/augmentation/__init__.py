"""Batched data augmentation on the training device (paper 003 §IV) for ``CTOrgIOUTrainer``."""

from nnunet_ctorg.augmentation.parameters import AugmentationParameters
from nnunet_ctorg.augmentation.pipeline import DeviceAugmentation, build_device_augmentation, ct_channel_statistics

__all__ = ["AugmentationParameters", "DeviceAugmentation", "build_device_augmentation", "ct_channel_statistics"]
