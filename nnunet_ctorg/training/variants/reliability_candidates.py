"""The losses ``benchmarks/trainer_reliability.py`` compared, each at the demo's budget (docs/training.md,
"Reliability of the trainers").

The chosen one, ``CTOrgIOUTrainer_batchLogIOU_skipAbsent_demo``, is the configuration of ``CTOrgIOUTrainer``.
"""

from nnunet_ctorg.training.trainers import CTOrgIOUCETrainer, CTOrgIOUTrainer_plainIOU
from nnunet_ctorg.training.variants.demo_budgets import DemoBudget


class CTOrgIOUTrainer_plainIOU_demo(DemoBudget, CTOrgIOUTrainer_plainIOU):
    """The paper's ``1 - IoU`` per example at the demo's budget (benchmark candidate)."""

    augmentation_start_epoch = 15


class CTOrgIOUCETrainer_demo(DemoBudget, CTOrgIOUCETrainer):
    """IOU + CE at the demo's budget (benchmark candidate)."""

    augmentation_start_epoch = 15


class CTOrgIOUTrainer_batchIOU_demo(CTOrgIOUTrainer_plainIOU_demo):
    """``1 - IoU`` over the batch (benchmark candidate)."""

    iou_over_batch = True


class CTOrgIOUTrainer_batchIOU_CEwarmup_demo(CTOrgIOUTrainer_plainIOU_demo):
    """``1 - IoU`` over the batch + CE decaying from 1 to 0 over 15 epochs (benchmark candidate)."""

    iou_over_batch = True
    ce_warmup_epochs = 15


class CTOrgIOUTrainer_batchLogIOU_demo(CTOrgIOUTrainer_batchIOU_demo):
    """``-log IoU`` over the batch and every class (benchmark candidate; lost the bladder in 2 of 3 seeds)."""

    iou_log = True


class CTOrgIOUTrainer_batchLogIOU_skipAbsent_demo(CTOrgIOUTrainer_batchLogIOU_demo):
    """``-log IoU`` over the batch, classes absent from the batch left out (benchmark candidate, chosen: the
    configuration of ``CTOrgIOUTrainer`` and ``CTOrgIOUTrainer_demo``)."""

    iou_skip_absent = True
