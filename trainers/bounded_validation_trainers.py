"""``<Trainer>_BoundedVal`` for nnU-Net's ``-tr`` lookup: any trainer with nnunet-ctorg's bounded validation.

The classes are made and kept in ``nnunet_ctorg.training.bounded_variants``; nothing is defined here (nnU-Net
drops this module from ``sys.modules`` after its search).
"""

from nnunet_ctorg.training import bounded_variants


def __getattr__(name: str):
    return getattr(bounded_variants, name)
