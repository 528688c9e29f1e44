"""The grid worlds of classic_rl as text games for a language model: FrozenLake-v1 (4x4, slippery) and the tutorial maze.

    prompt   the task, then reset()'s observation: the map, and the square the player stands on
    turn     the model writes a move, one of left, down, right, up (the word ends its turn)
    answer   the square it reached, and "goal", "hole" or "time" when that ends the episode; any other text for a
             move is illegal and ends the episode too, with nothing won

    Question: Walk from S to G on the frozen lake. ... Squares are numbered 0-15 row by row.
    SFFF FHFH FFFH HFFG. You are on 0.
    Answer: down 4 down 8 right 9 down 13 right 14 right 15 goal

Rewards (get_reward): FrozenLake 1 for reaching G; the maze shortest / taken moves for reaching G, so 1 only for a
shortest path. The same envs solved by value iteration (classic_rl.algos.tabular) give the optimal policy that the
language model's success rate is measured against, on the same episode seeds and starts.
"""

from __future__ import annotations

import random
from functools import cache

import gymnasium as gym
import numpy as np

from classic_rl import envs
from classic_rl.algos.tabular import transition_model, value_iteration
from classic_rl.infra.errors import ConfigError
from rlhf_toy.agents.turns import Episode
from rlhf_toy.chat import format_prompt

MOVES = ("left", "down", "right", "up")  # FrozenLake's action order
GAMES = {
    "frozenlake": dict(env_id="FrozenLake-v1", prompt="Walk from S to G on the frozen lake without falling into a hole H; "
                       "the ice is slippery, so a move may go sideways. Squares are numbered 0-15 row by row. "
                       "Moves: left, down, right, up."),
    "maze": dict(env_id="Maze-v0", prompt="Walk from where you stand to G by the shortest path; # is a wall. Squares are "
                 "numbered 0-63 row by row. Moves: left, down, right, up."),
}


class GridGame(Episode):
    """One episode of a grid env as text (the module's docstring shows a transcript)."""

    stop_strings = MOVES

    def __init__(self, game: str):
        super().__init__()
        if game not in GAMES:
            raise ConfigError(f"unknown text game {game!r}; accepted: {', '.join(GAMES)}")
        self.game = game
        self.env = envs.make_env(GAMES[game]["env_id"])
        if not isinstance(self.env.observation_space, gym.spaces.Discrete):
            raise ConfigError(f"{GAMES[game]['env_id']}'s observations are {self.env.observation_space}, not squares; accepted: "
                              "envs with Discrete observations")
        self.state, self.moves, self.reached = 0, 0, False

    def reset(self, seed: int | None = None, start: int | None = None, **_) -> str:
        """The map and the start: the env's own (FrozenLake), or square `start` (the maze), seeded by the row's `seed`."""
        self.state, _ = self.env.reset(seed=seed)
        if start is not None:
            self.env.unwrapped.state = self.state = int(start)
        self.start, self.moves, self.reached, self.done = self.state, 0, False, False
        return f"{map_text(self.env)}. You are on {self.state}."

    def respond(self, turn: str) -> str:
        move = turn.strip()
        self.tool_calls += 1  # a move is the game's one tool; an illegal one, a failed call
        if move not in MOVES:
            self.done, self.tool_failures = True, self.tool_failures + 1
            return " illegal"
        self.state, reward, terminated, truncated, _ = self.env.step(MOVES.index(move))
        self.moves += 1
        self.reached = bool(terminated and self.state == goal_square(self.env))
        self.done = terminated or truncated
        ending = (" goal" if self.reached else " hole" if terminated else " time") if self.done else ""
        return f" {self.state}{ending}"

    def get_reward(self) -> float:
        if not self.reached:
            return 0.0
        return shortest_moves(self.game, self.start) / self.moves if self.game == "maze" else 1.0


def map_text(env: gym.Env) -> str:
    """The map's rows joined by spaces: FrozenLake's desc, or the maze's layout."""
    unwrapped = env.unwrapped
    rows = ["".join(row) for row in unwrapped.grid] if hasattr(unwrapped, "grid") else [b"".join(row).decode() for row in unwrapped.desc]
    return " ".join(rows)


def goal_square(env: gym.Env) -> int:
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "goal"):
        return unwrapped.goal
    return int(np.flatnonzero(unwrapped.desc.flatten() == b"G")[0])


@cache
def optimal_policy(game: str) -> np.ndarray:
    """Value iteration's greedy policy `[squares]` (gamma 0.99 on FrozenLake, whose optimum 0.74 it reaches; 1 on the
    maze, whose values are minus the distances to G)."""
    env_id = GAMES[game]["env_id"]
    _, policy, _ = value_iteration(transition_model(env_id), len(MOVES), 1.0 if game == "maze" else 0.99, 1e-10)
    return policy


@cache
def shortest_moves(game: str, start: int) -> int:
    """Moves from start to G along value iteration's policy (on the deterministic maze, a shortest path)."""
    env = envs.make_env(GAMES[game]["env_id"]).unwrapped
    state, moves = start, 0
    while state != goal_square(env):
        state, moves = env.P[state][int(optimal_policy(game)[state])][0][1], moves + 1
    return moves


def play(game: str, row: dict, choose_move) -> tuple[str, str, float]:
    """(the first observation, the completion's text, the reward) of one episode from a prompt row, moves chosen by
    choose_move(square)."""
    episode = GridGame(game)
    observation = episode.reset(**{k: v for k, v in row.items() if k != "prompt"})
    text = ""
    while not episode.done:
        move = f" {choose_move(episode.state)}"
        text += move + episode.respond(move)
    return observation, text, episode.get_reward()


def optimal_success_rate(game: str, rows: list[dict]) -> float:
    """Value iteration's policy's share of the rows' episodes with reward 1, on the same seeds and starts."""
    return success_rate([play(game, row, lambda s: MOVES[optimal_policy(game)[s]])[2] for row in rows])


def transcripts(game: str, rows: list[dict], epsilon: float, rng: random.Random) -> list[str]:
    """Pretraining texts: one episode per row, played epsilon-greedily around value iteration's policy (epsilon of the
    moves uniformly random), as prompt and completion: the format, and play that RL can improve."""
    def move(square: int) -> str:
        return rng.choice(MOVES) if rng.random() < epsilon else MOVES[optimal_policy(game)[square]]

    texts = []
    for row in rows:
        observation, completion, _ = play(game, row, move)
        texts.append(f"{format_prompt(row['prompt'] + chr(10) + observation)}{completion}")
    return texts


def game_rows(game: str, count: int, first_seed: int, rng: random.Random) -> list[dict]:
    """Prompt rows: {"prompt", "seed"}, and on the maze a "start" square (any open square but G)."""
    rows = [{"prompt": GAMES[game]["prompt"], "seed": first_seed + i} for i in range(count)]
    if game == "maze":
        env = envs.make_env(GAMES[game]["env_id"]).unwrapped
        open_squares = [s for s in range(env.rows * env.cols) if env.grid.flat[s] != "#" and s != env.goal]
        for row in rows:
            row["start"] = rng.choice(open_squares)
    return rows


def success_rate(rewards: list[float]) -> float:
    """The share of episodes with reward 1: FrozenLake's goal reached, the maze's by a shortest path."""
    return float(np.mean(np.asarray(rewards) >= 1.0 - 1e-9))
