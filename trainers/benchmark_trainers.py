"""Re-export of the demo's and the reliability benchmark's trainers, for nnU-Net's ``nnUNet_extTrainer`` search.

nnU-Net imports this file under a top-level name and drops it from ``sys.modules``
afterwards, so nothing may be defined here: the classes stay in the installed package
(``nnunet_ctorg.training.variants``).
"""

from nnunet_ctorg.training.variants.demo_budgets import (  # noqa: F401
    CTOrgIOUTrainer_demo,
    CTOrgIOUTrainer_demo3x,
    nnUNetTrainer_CTOrgDemo,
    nnUNetTrainer_CTOrgDemo3x,
)
from nnunet_ctorg.training.variants.reliability_candidates import (  # noqa: F401
    CTOrgIOUCETrainer_demo,
    CTOrgIOUTrainer_batchIOU_CEwarmup_demo,
    CTOrgIOUTrainer_batchIOU_demo,
    CTOrgIOUTrainer_batchLogIOU_demo,
    CTOrgIOUTrainer_batchLogIOU_skipAbsent_demo,
    CTOrgIOUTrainer_plainIOU_demo,
)
