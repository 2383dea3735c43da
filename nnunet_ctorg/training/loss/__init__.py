from nnunet_ctorg.training.loss.iou import SoftIoULoss

__all__ = ["SoftIoULoss"]
