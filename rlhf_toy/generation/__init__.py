"""Sampling completions, and the log-probs of a rollout under the trainer's forward."""
