"""Training and evaluation with the MURA recipe, on the same preprocessing and model as serving."""
