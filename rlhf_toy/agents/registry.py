"""The tools and environments that --tools and --environment-factory name, and the Agent they make."""

from __future__ import annotations

import functools
from collections.abc import Callable

from classic_rl.infra.cli import load_user_object
from classic_rl.infra.errors import ConfigError
from rlhf_toy.agents.text_games import GAMES, make_game
from rlhf_toy.agents.tools import calculator
from rlhf_toy.agents.turns import Agent

TOOLS: dict[str, Callable] = {"calculator": calculator}
ENVIRONMENTS: dict[str, Callable] = {game: functools.partial(make_game, game) for game in GAMES}


def resolve_agent(tools: str, environment_factory: str | None, max_tool_calling_iterations: int | None) -> Agent | None:
    """The run's Agent from --tools (a comma list of built-in names, FILE.py:FUNCTION or package.module:FUNCTION) and
    --environment-factory (a built-in game, FILE.py:CLASS or package.module:CLASS); None when both are empty: single-turn."""
    names = [name.strip() for name in tools.split(",") if name.strip()]
    if not names and not environment_factory:
        return None
    functions = [TOOLS[name] if name in TOOLS else resolve_user(name, "--tools", TOOLS) for name in names]
    factory = None
    if environment_factory:
        factory = ENVIRONMENTS.get(environment_factory) or resolve_user(environment_factory, "--environment-factory", ENVIRONMENTS)
    return Agent(functions, factory, max_tool_calling_iterations)


def resolve_user(spec: str, flag: str, built_in: dict) -> Callable:
    if ":" not in spec:
        raise ConfigError(f"unknown {flag} {spec!r}; accepted: {', '.join(built_in)}, FILE.py:NAME or package.module:NAME")
    return load_user_object(spec, flag)
