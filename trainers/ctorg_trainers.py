"""Re-export of the nnunet-ctorg trainers for nnU-Net's ``nnUNet_extTrainer`` search.

nnU-Net imports this file under a top-level name and drops it from ``sys.modules``
afterwards, so nothing may be defined here: the classes stay in the installed package.
"""

from nnunet_ctorg.training.trainers import (  # noqa: F401
    CTOrgIOUCETrainer,
    CTOrgIOUCETrainer_demo,
    CTOrgIOUTrainer,
    CTOrgIOUTrainer_5epochs,
    CTOrgIOUTrainer_batchIOU_CEwarmup_demo,
    CTOrgIOUTrainer_batchIOU_demo,
    CTOrgIOUTrainer_batchLogIOU_demo,
    CTOrgIOUTrainer_batchLogIOU_skipAbsent_demo,
    CTOrgIOUTrainer_demo,
    CTOrgIOUTrainer_demo3x,
    CTOrgIOUTrainer_nnUNetDA,
    CTOrgIOUTrainer_NoDA,
    CTOrgIOUTrainer_plainIOU,
    CTOrgIOUTrainer_plainIOU_demo,
    CTOrgIOUTrainer_tiny,
    nnUNetTrainer_CTOrgDemo,
    nnUNetTrainer_CTOrgDemo3x,
)
