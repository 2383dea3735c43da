"""Training components: the IOU loss and the nnU-Net trainers that use it."""
