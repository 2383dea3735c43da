"""Synthetic CT phantoms and writers for the on-disk layouts of the public datasets."""

from nnunet_ctorg.phantoms.anatomy import FIELDS_OF_VIEW, STRUCTURE_IDS, Phantom, generate_phantom

__all__ = ["FIELDS_OF_VIEW", "STRUCTURE_IDS", "Phantom", "generate_phantom"]
