"""Folder for nnU-Net's ``nnUNet_extTrainer`` lookup (installed as ``nnunet_ctorg.trainers``).

It only re-exports the trainers defined in ``nnunet_ctorg.training.trainers`` (``ctorg_trainers.py``) and
``nnunet_ctorg.training.variants`` (``benchmark_trainers.py``); run ``nnunet_ctorg_env`` to print the
``export nnUNet_extTrainer=...`` line that points here.
"""
