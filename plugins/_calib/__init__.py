"""Internals of the calibration and mask plugins (constants loading, kernels, common mode, darks)."""
