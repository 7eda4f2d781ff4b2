"""Replay and benchmark evaluation."""
