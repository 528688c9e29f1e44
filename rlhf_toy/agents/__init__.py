"""Language models as agents: multi-turn rollouts with tools (turns.py), the classic environments as text games
(text_games.py), and the names --tools and --environment-factory take (registry.py)."""
