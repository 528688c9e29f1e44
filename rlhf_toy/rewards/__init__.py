"""Rewards: rules and user functions, reward models and their training, labelling by people."""
