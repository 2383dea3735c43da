"""Re-export of the nnunet-ctorg trainers a user selects, for nnU-Net's ``nnUNet_extTrainer`` search.

nnU-Net imports this file under a top-level name and drops it from ``sys.modules``
afterwards, so nothing may be defined here: the classes stay in the installed package
(``nnunet_ctorg.training.trainers``). The demo's and the benchmarks' trainers: ``benchmark_trainers.py``.
"""

from nnunet_ctorg.training.trainers import (  # noqa: F401
    CTOrgIOUCETrainer,
    CTOrgIOUTrainer,
    CTOrgIOUTrainer_5epochs,
    CTOrgIOUTrainer_nnUNetDA,
    CTOrgIOUTrainer_NoDA,
    CTOrgIOUTrainer_plainIOU,
    CTOrgIOUTrainer_tiny,
)
