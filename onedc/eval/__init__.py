"""Evaluation tools: BD-rate and the published baseline rate-quality curves."""
