"""Evaluation metrics, per-organ statistics and previews of segmentations (SPEC §8)."""
