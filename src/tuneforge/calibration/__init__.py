"""Calibration tuning: teach a model to predict whether its own answer is correct."""
