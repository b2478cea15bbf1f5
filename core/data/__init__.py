"""Training data: prompt files for rollouts and preference pairs for reward training."""
