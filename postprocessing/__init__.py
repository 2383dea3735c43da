"""Postprocessing of predicted label maps (installed as ``nnunet_ctorg.postprocessing``)."""
