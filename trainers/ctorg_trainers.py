"""Re-export of the nnunet-ctorg trainers for nnU-Net's ``nnUNet_extTrainer`` search.

nnU-Net imports this file under a top-level name and drops it from ``sys.modules``
afterwards, so nothing may be defined here: the classes stay in the installed package.
"""

from nnunet_ctorg.training.trainers import (  # noqa: F401
    CTOrgIOUCETrainer,
    CTOrgIOUTrainer,
    CTOrgIOUTrainer_5epochs,
    CTOrgIOUTrainer_demo,
    CTOrgIOUTrainer_nnUNetDA,
    CTOrgIOUTrainer_NoDA,
    CTOrgIOUTrainer_tiny,
)
