"""Simulation-only hardware models (not synthesized): the DRAM model."""
