"""The grid worlds of classic_rl as text games for a language model: FrozenLake-v1 (4x4, slippery), the tutorial maze
and Taxi-v4.

    prompt   the task, then reset()'s observation: the map, and the square the player stands on
    turn     the model writes a move, one of the game's move words (the word ends its turn)
    answer   the square it reached, and "goal", "hole" or "time" when that ends the episode; any other text for a
             move is illegal and ends the episode too, with nothing won

    Question: Walk from S to G on the frozen lake. ... Squares are numbered 0-15 row by row.
    SFFF FHFH FFFH HFFG. You are on 0.
    Answer: down 4 down 8 right 9 down 13 right 14 right 15 goal

Taxi's state is more than a square: the prompt says where the taxi, the passenger and their destination are; a
pickup or dropoff is answered "aboard", "delivered" (the end), "dropped" (at another stand) or "no" (nobody to pick
up or nowhere to drop off: the env's -10, a wasted move here).

    Question: Drive the taxi to the passenger, ... The taxi is on 14, the passenger on 20, going to 4.
    Answer: west 13 west 12 south 17 ... pickup aboard north 15 ... dropoff delivered

Rewards (get_reward): FrozenLake 1 for reaching G; the maze and Taxi shortest / taken moves at the end, so 1 only for
a shortest path. The same envs solved by value iteration (classic_rl.algos.tabular) give the optimal policy that the
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

GRID_MOVES = ("left", "down", "right", "up")  # FrozenLake's and the maze's action order
TAXI_MOVES = ("south", "north", "east", "west", "pickup", "dropoff")  # Taxi's
# per game: its env, prompt, move words (in action order), moves before " time" and whether the reward counts moves
# (deterministic games, where a shortest path exists); gymnasium's time limits are 100 (FrozenLake, the maze) and 200
# (Taxi, whose shortest episodes take 6-18 moves: 30 keeps the transcript inside the tiny model's context)
GAMES = {
    "frozenlake": dict(env_id="FrozenLake-v1", prompt="Walk from S to G on the frozen lake without falling into a hole H; "
                       "the ice is slippery, so a move may go sideways. Squares are numbered 0-15 row by row. "
                       "Moves: left, down, right, up.", moves=GRID_MOVES, max_moves=100, shortest=False),
    "maze": dict(env_id="Maze-v0", prompt="Walk from where you stand to G by the shortest path; # is a wall. Squares are "
                 "numbered 0-63 row by row. Moves: left, down, right, up.", moves=GRID_MOVES, max_moves=100, shortest=True),
    "taxi": dict(env_id="Taxi-v4", prompt="Drive the taxi to the passenger, pick them up and drop them off where they are going, "
                 "in the fewest moves; | is a wall. Squares are numbered 0-24 row by row: R is 0, G 4, Y 20 and B 23. "
                 "Moves: south, north, east, west, pickup, dropoff.", moves=TAXI_MOVES, max_moves=30, shortest=True),
}


class GridGame(Episode):
    """One episode of a grid env as text (the module's docstring shows a transcript)."""

    def __init__(self, game: str):
        super().__init__()
        if game not in GAMES:
            raise ConfigError(f"unknown text game {game!r}; accepted: {', '.join(GAMES)}")
        self.game, self.moves_text = game, GAMES[game]["moves"]
        self.stop_strings = self.moves_text
        self.env = envs.make_env(GAMES[game]["env_id"])
        if not isinstance(self.env.observation_space, gym.spaces.Discrete):
            raise ConfigError(f"{GAMES[game]['env_id']}'s observations are {self.env.observation_space}, not squares; accepted: "
                              "envs with Discrete observations")
        self.state, self.moves, self.reached = 0, 0, False

    def reset(self, seed: int | None = None, start: int | None = None, **_) -> str:
        """The map and the start: the env's own (FrozenLake, Taxi), or state `start` (the maze), seeded by the row's `seed`."""
        self.state, _ = self.env.reset(seed=seed)
        if start is not None:
            self.env.unwrapped.state = self.state = int(start)
        self.start, self.moves, self.reached, self.done = self.state, 0, False, False
        return f"{map_text(self.env)}. {self.where()}"

    def where(self) -> str:
        return f"You are on {self.state}."

    def respond(self, turn: str) -> str:
        move = turn.strip()
        self.tool_calls += 1  # a move is the game's one tool; an illegal one, a failed call
        if move not in self.moves_text:
            self.done, self.tool_failures = True, self.tool_failures + 1
            return " illegal"
        before = self.state
        self.state, _, terminated, truncated, _ = self.env.step(self.moves_text.index(move))
        self.moves += 1
        self.reached = bool(terminated and self.at_goal())
        self.done = terminated or truncated or self.moves >= GAMES[self.game]["max_moves"]
        ending = (" goal" if self.reached else " hole" if terminated else " time") if self.done else ""
        return f" {self.answer(move, before)}{ending}"

    def at_goal(self) -> bool:
        return self.state == goal_square(self.env)

    def answer(self, move: str, before: int) -> str:
        """What the player sees after `move` from state `before`: the square it stands on."""
        return str(self.state)

    def get_reward(self) -> float:
        if not self.reached:
            return 0.0
        return shortest_moves(self.game, self.start) / self.moves if GAMES[self.game]["shortest"] else 1.0


class TaxiGame(GridGame):
    """Taxi-v4 as text: the taxi's square (0-24) after a drive; after a pickup "aboard" or "no", after a dropoff
    "delivered", "dropped" (at another stand) or "no".
    An episode ends only with the passenger delivered (reached) or after max_moves (" time")."""

    def where(self) -> str:
        taxi, passenger, destination = self.squares()
        waiting = "in the taxi" if passenger is None else f"on {passenger}"
        return f"The taxi is on {taxi}, the passenger {waiting}, going to {destination}."

    def squares(self) -> tuple[int, int | None, int]:
        """(the taxi's square, the passenger's square or None in the taxi, the destination's square), 0-24."""
        row, col, passenger, destination = self.env.unwrapped.decode(self.state)
        locations = [r * 5 + c for r, c in self.env.unwrapped.locs]
        return row * 5 + col, None if passenger == len(locations) else locations[passenger], locations[destination]

    def at_goal(self) -> bool:
        return True  # Taxi terminates on a delivery alone

    def answer(self, move: str, before: int) -> str:
        if move == "pickup":
            return "aboard" if self.state != before else "no"
        if move == "dropoff":  # at another stand than the destination the passenger gets out there
            return "delivered" if self.reached else "dropped" if self.state != before else "no"
        return str(self.squares()[0])


def make_game(game: str) -> GridGame:
    """An episode of text game `game` (GAMES), for --environment-factory GAME."""
    return TaxiGame(game) if game == "taxi" else GridGame(game)


def map_text(env: gym.Env) -> str:
    """The map's rows joined by spaces: FrozenLake's desc, the maze's layout, or Taxi's five rows inside its frame (the
    squares and the walls | between them, with . for the spaces, so that the rows stay one word each)."""
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "grid"):
        return " ".join("".join(row) for row in unwrapped.grid)
    rows = [b"".join(row).decode() for row in unwrapped.desc]
    if rows[0].startswith("+"):  # Taxi's frame
        rows = [row[1:-1].replace(" ", ".") for row in rows[1:-1]]
    return " ".join(rows)


def goal_square(env: gym.Env) -> int:
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "goal"):
        return unwrapped.goal
    return int(np.flatnonzero(unwrapped.desc.flatten() == b"G")[0])


@cache
def optimal_policy(game: str) -> np.ndarray:
    """Value iteration's greedy policy `[states]` (gamma 0.99 on FrozenLake, whose optimum 0.74 it reaches; 1 on the
    deterministic games, whose values count the moves left)."""
    spec = GAMES[game]
    _, policy, _ = value_iteration(transition_model(spec["env_id"]), len(spec["moves"]), 1.0 if spec["shortest"] else 0.99, 1e-10)
    return policy


@cache
def shortest_moves(game: str, start: int) -> int:
    """Moves from state start to the episode's end along value iteration's policy (on a deterministic game, the
    fewest)."""
    model, policy = transition_model(GAMES[game]["env_id"]), optimal_policy(game)
    state, moves, done = start, 0, False
    while not done:
        _, state, _, done = model[state][int(policy[state])][0]
        moves += 1
    return moves


def play(game: str, row: dict, choose_move) -> tuple[str, str, float]:
    """(the first observation, the completion's text, the reward) of one episode from a prompt row, moves chosen by
    choose_move(state)."""
    episode = make_game(game)
    observation = episode.reset(**{k: v for k, v in row.items() if k != "prompt"})
    text = ""
    while not episode.done:
        move = f" {choose_move(episode.state)}"
        text += move + episode.respond(move)
    return observation, text, episode.get_reward()


def policy_success_rate(game: str, rows: list[dict], policy) -> float:
    """A table policy's (an action per state) share of the rows' episodes with reward 1."""
    moves = GAMES[game]["moves"]
    return success_rate([play(game, row, lambda state: moves[policy[state]])[2] for row in rows])


def optimal_success_rate(game: str, rows: list[dict]) -> float:
    """Value iteration's policy's share of the rows' episodes with reward 1, on the same seeds and starts."""
    return policy_success_rate(game, rows, optimal_policy(game))


def transcripts(game: str, rows: list[dict], epsilon: float, rng: random.Random) -> list[str]:
    """Pretraining texts: one episode per row, played epsilon-greedily around value iteration's policy (epsilon of the
    moves uniformly random), as prompt and completion: the format, and play that RL can improve."""
    moves = GAMES[game]["moves"]

    def move(state: int) -> str:
        return rng.choice(moves) if rng.random() < epsilon else moves[optimal_policy(game)[state]]

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
    """The share of episodes with reward 1: FrozenLake's goal reached, the maze's and Taxi's by a shortest path."""
    return float(np.mean(np.asarray(rewards) >= 1.0 - 1e-9))
