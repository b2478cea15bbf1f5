"""PPO: one step in step.py (rollout -> score -> advantages -> update), the models and how they
run in models.py, the run loop in loop.py, what a step records in records.py."""
