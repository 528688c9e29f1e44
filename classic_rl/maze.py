"""A grid maze with a known transition model, for planning (tutorial 002's value-iteration example).

    S . # . . . . .        S start, G goal, # wall
    . # # . # # # .        actions: 0 left, 1 down, 2 right, 3 up (FrozenLake's order)
    . . . . # . . .        a move into a wall or off the grid leaves the agent where it is
    # # . # # . # .        reward -1 per move, the episode ends on reaching G,
    . . . # . . # .        so the return of a path is minus its length and value iteration with
    . # . . . # # .        gamma = 1 computes minus the shortest distance to G from every cell
    . # # # # . . .
    . . . . . . # G

Registered as `Maze-v0` (100 steps at most); `env.unwrapped.P[s][a] = [(1.0, s', reward, terminated)]`
is the model that classic_rl.algos.tabular plans with, as for FrozenLake and Taxi.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

LAYOUT = (
    "S.#.....",
    ".##.###.",
    "....#...",
    "##.##.#.",
    "...#..#.",
    ".#...##.",
    ".####...",
    "......#G",
)
MOVES = ((0, -1), (1, 0), (0, 1), (-1, 0))  # (row, col) change of left, down, right, up


class Maze(gym.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, layout: tuple[str, ...] = LAYOUT, render_mode: str | None = None):
        self.grid = np.array([list(row) for row in layout])
        self.rows, self.cols = self.grid.shape
        self.start = self._index(*np.argwhere(self.grid == "S")[0])
        self.goal = self._index(*np.argwhere(self.grid == "G")[0])
        self.observation_space = gym.spaces.Discrete(self.rows * self.cols)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.render_mode = render_mode
        self.P = {s: {a: [self._transition(s, a)] for a in range(len(MOVES))} for s in range(self.rows * self.cols)}

    def _index(self, row: int, col: int) -> int:
        return int(row) * self.cols + int(col)

    def _transition(self, state: int, action: int) -> tuple[float, int, float, bool]:
        row, col = divmod(state, self.cols)
        if state == self.goal or self.grid[row, col] == "#":  # absorbing: never entered, or already over
            return 1.0, state, 0.0, True
        new_row, new_col = row + MOVES[action][0], col + MOVES[action][1]
        if not (0 <= new_row < self.rows and 0 <= new_col < self.cols) or self.grid[new_row, new_col] == "#":
            new_row, new_col = row, col
        following = self._index(new_row, new_col)
        return 1.0, following, -1.0, following == self.goal

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = self.start
        return self.state, {}

    def step(self, action: int):
        _, self.state, reward, terminated = self.P[self.state][int(action)][0]
        return self.state, reward, terminated, False, {}

    def render(self) -> str:
        grid = self.grid.copy()
        grid.flat[self.state] = "A"
        return "\n".join(" ".join(row) for row in grid)

    def shortest_path_length(self) -> int:
        """Moves from S to G by breadth-first search: what a planner must match."""
        distance, frontier = {self.start: 0}, deque([self.start])
        while frontier:
            state = frontier.popleft()
            for action in range(len(MOVES)):
                _, following, _, _ = self._transition(state, action)
                if following not in distance:
                    distance[following] = distance[state] + 1
                    frontier.append(following)
        return distance[self.goal]


gym.register("Maze-v0", entry_point="classic_rl.maze:Maze", max_episode_steps=100)
