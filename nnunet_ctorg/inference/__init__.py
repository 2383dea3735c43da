"""Low-RAM inference: body-contour cropping and cranio-caudal chunked prediction (SPEC §7)."""
