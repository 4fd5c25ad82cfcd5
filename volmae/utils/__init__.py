"""Shared engine utilities: atomic checkpoints, schedules, devices, the training loop."""
