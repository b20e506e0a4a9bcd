"""Simulation infrastructure: build and run testbenches, drive and check streams, formal checks."""
