"""Planning additions: an isotropic coarse configuration with anti-aliased resampling (paper 003 §V-A)."""
