"""nnunet-ctorg: nnU-Net v2 extension for multi-organ CT segmentation (CT-ORG, TotalSegmentator, AbdomenCT-1K)."""

__version__ = "0.1.0"
