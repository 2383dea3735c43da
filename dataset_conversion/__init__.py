"""Conversion of public CT datasets into nnU-Net raw datasets (installed as ``nnunet_ctorg.dataset_conversion``)."""
