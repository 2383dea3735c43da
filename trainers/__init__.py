"""Folder for nnU-Net's ``nnUNet_extTrainer`` lookup (installed as ``nnunet_ctorg.trainers``).

It only re-exports the trainers defined in ``nnunet_ctorg.training.trainers``; run
``nnunet_ctorg_env`` to print the ``export nnUNet_extTrainer=...`` line that points here.
"""
