"""Sweeps: Ray Tune over training jobs (space.py: sweep file -> Tune objects; sweep.py: driver and trials)."""
