"""Gymnasium wrappers for text envs, one per module."""
