"""Calibration data and its loaders (installed as compresskit.calib)."""
