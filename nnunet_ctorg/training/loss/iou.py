"""Soft intersection-over-union (Jaccard) loss of Rister et al. (paper 003, eq. 5 and 8).

For class probabilities p and one-hot labels y, per class

    L_IOU = 1 - sum(p^m * y) / (sum(p^m) + sum(y) - sum(p^m * y)),

averaged over classes (background included by default, as in the paper) and, unless
``batch_dice``, over the samples of the batch. ``m = 1`` is the paper's loss; any ``m > 0``
keeps its properties (eq. 8). Smoothing, batch reduction, loss masks (ignore label) and DDP
all-gather follow nnU-Net's ``MemoryEfficientSoftDiceLoss`` so that the class drops in
wherever nnU-Net takes a ``dice_class``.
"""

from collections.abc import Callable

import torch
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from torch import nn


class SoftIoULoss(nn.Module):
    """Soft IOU loss with nnU-Net's loss constructor shape.

    Args:
        apply_nonlin: Non-linearity applied to the network output first (softmax for
            labels, sigmoid for regions); ``None`` if ``x`` already holds probabilities.
        batch_dice: Sum intersections and unions over the whole batch (and over all DDP
            workers) before dividing, instead of one IOU per sample.
        do_bg: Include channel 0 (background) in the class average. The paper does.
        smooth: Added to numerator and denominator; makes empty-vs-empty an IOU of 1.
        ddp: All-gather the sums across workers when ``batch_dice`` is set.
        power: The exponent m of the eq. 8 family; p is replaced by p**m. Must be > 0.
        log: Average ``-log(IoU)`` over the classes instead of ``1 - IoU``: the same optimum, but a
            class whose probabilities the softmax has pushed to 0 keeps a gradient of order
            1/|class| per voxel (with ``1 - IoU`` it vanishes with p, and the class never returns).
            Computed as ``log(union + s) - log(intersection + s)``, without a clamp that would cut the
            gradient of a class with IoU below the clamp.
        skip_absent: Leave out of the mean the classes absent from the reference (sum of y = 0; over the
            batch with ``batch_dice``, else per example). Their term, ``-log(s / (sum p + s))`` or
            ``sum p / (sum p + s)``, only pushes the class down everywhere; with ``log`` that push outlasts the
            pull of the batches that hold the class once its probabilities are small, and a rare class dies
            (docs/training.md, "Reliability of the trainers"). False positives of a class still cost in every
            batch holding it (they enlarge its union) and in the background's term.
    """

    def __init__(
        self,
        apply_nonlin: Callable | None = None,
        batch_dice: bool = False,
        do_bg: bool = True,
        smooth: float = 1.0,
        ddp: bool = True,
        power: float = 1.0,
        log: bool = False,
        skip_absent: bool = False,
    ) -> None:
        super().__init__()
        if not power > 0:
            raise ValueError(f"power must be > 0 (eq. 8 of Rister et al.), got {power!r}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        self.apply_nonlin = apply_nonlin
        self.batch_dice = batch_dice
        self.do_bg = do_bg
        self.smooth = float(smooth)
        self.ddp = ddp
        self.power = float(power)
        self.log = bool(log)
        self.skip_absent = bool(skip_absent)

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the loss for output ``x`` (b, c, ...) and target ``y``.

        ``y`` is a label map (b, 1, ...) or (b, ...), or already one-hot (b, c, ...).
        ``loss_mask`` (b, 1, ...) is 1 where the loss counts and 0 where it does not
        (nnU-Net passes ``target != ignore_label``).
        """
        if self.apply_nonlin is not None:
            x = self.apply_nonlin(x)
        if self.power != 1.0:
            x = x.clamp_min(0) ** self.power
        axes = tuple(range(2, x.ndim))

        with torch.no_grad():
            if x.ndim != y.ndim:
                y = y.view((y.shape[0], 1, *y.shape[1:]))
            if x.shape == y.shape:
                y_onehot = y.to(torch.float32)
            else:
                y_onehot = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
                y_onehot.scatter_(1, y.long(), 1)
            if not self.do_bg:
                y_onehot = y_onehot[:, 1:]
            if loss_mask is not None:
                y_onehot = y_onehot * loss_mask
            sum_gt = y_onehot.sum(axes, dtype=torch.float32)

        if not self.do_bg:
            x = x[:, 1:]
        if loss_mask is not None:
            x = x * loss_mask
        intersect = (x * y_onehot).sum(axes, dtype=torch.float32)
        sum_pred = x.sum(axes, dtype=torch.float32)

        if self.batch_dice:
            if self.ddp:
                intersect = AllGatherGrad.apply(intersect).sum(0, dtype=torch.float32)
                sum_pred = AllGatherGrad.apply(sum_pred).sum(0, dtype=torch.float32)
                sum_gt = AllGatherGrad.apply(sum_gt).sum(0, dtype=torch.float32)
            intersect = intersect.sum(0, dtype=torch.float32)
            sum_pred = sum_pred.sum(0, dtype=torch.float32)
            sum_gt = sum_gt.sum(0, dtype=torch.float32)

        union = sum_pred + sum_gt - intersect
        if self.log:
            per_class = torch.log((union + self.smooth).clamp_min(1e-8)) - torch.log(
                (intersect + self.smooth).clamp_min(1e-8))
        else:
            per_class = 1 - (intersect + self.smooth) / (union + self.smooth).clamp_min(1e-8)
        if not self.skip_absent:
            return per_class.mean()
        present = sum_gt > 0
        if not present.any():  # nothing to learn from (e.g. do_bg=False on an empty patch): zero, in the graph
            return (per_class * 0).sum()
        return per_class[present].mean()
