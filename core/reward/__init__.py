"""Bradley-Terry reward-model training (core/reward/training.py)."""
