"""Batched data augmentation on the training device (paper 003 §IV) for ``CTOrgIOUTrainer``."""

from nnunet_ctorg.augmentation.parameters import AugmentationParameters
from nnunet_ctorg.augmentation.pipeline import (
    DeviceAugmentation,
    augmentation_crop_size,
    build_device_augmentation,
    ct_channel_statistics,
)

__all__ = [
    "AugmentationParameters",
    "DeviceAugmentation",
    "augmentation_crop_size",
    "build_device_augmentation",
    "ct_channel_statistics",
]
