#!/usr/bin/env python
"""A Q-table and a language model on one text game: value iteration, Q-learning and the language model before and
after RL, each scored on the same evaluation episodes (seeds and starts) of the game's eval prompts.

    python scripts/train_rlhf.py --task frozenlake --run-dir runs/frozenlake
    python scripts/compare_game_agents.py --lm-run runs/frozenlake     # writes agents.json and agents.md there

value iteration   plans with the env's transition model: no env steps
Q-learning        classic_rl's tabular Q-learning with its preset for the env (epsilon-greedy, 300k steps on FrozenLake,
                  200k on Taxi), its greedy policy evaluated
language model    sampled at temperature 1 (the run's summary.json: success_rate_before/_after, the distribution RL
                  trains), and greedy (each move its most likely word, as the Q-table's argmax: like for like), before
                  and after RL; its env steps the moves of every training episode
"""

import json
import time
from pathlib import Path

from classic_rl.algos import ALGOS
from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.run_folder import write_json
from classic_rl.nets import load_agent
from classic_rl.presets import preset
from classic_rl.training import run_training
from rlhf_toy.agents.registry import resolve_agent
from rlhf_toy.agents.text_games import GAMES, optimal_policy, policy_success_rate
from rlhf_toy.data import load_prompt_rows
from rlhf_toy.evaluation import evaluate_on_prompts
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.rewards.functions import resolve_reward


def q_learning_policy(env_id: str, run_dir: Path, seed: int, steps: int | None) -> tuple[list[int], int, float]:
    """(greedy action per square, env steps, seconds) of classic_rl's Q-learning with its preset for env_id (steps: that
    many env steps instead of the preset's)."""
    config_cls, train_fn = ALGOS["q_learning"]
    fields = {**preset("q_learning", env_id), **({"total_timesteps": steps, "eval_every": steps} if steps else {})}
    cfg = config_cls(**{**fields, "env": env_id, "seed": seed, "run_dir": str(run_dir), "overwrite": True})
    start = time.perf_counter()
    summary = run_training("q_learning", train_fn, cfg)
    table = load_agent(run_dir / "policy.safetensors")
    return table.q.argmax(-1).tolist(), int(summary.get("env_steps", cfg.total_timesteps)), time.perf_counter() - start


def language_model_rows(run_dir: Path, config: dict, rows: list[dict]) -> list[dict]:
    """The language model's four rows: sampled, from its run folder (summary.json, and the moves per episode of each
    step in metrics.jsonl times the step's episodes); greedy, its base model and its trained model played here."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    moves = sum(row["tools/call_frequency"] for row in metrics if "tools/call_frequency" in row)
    env_steps = round(moves * config["prompts_per_step"] * config["num_generations"])
    after = f"after {summary['algo'].upper()}"
    return [{"method": "language model, before RL", "success_rate": summary["success_rate_before"], "env_steps": 0, "wall_s": 0.0},
            {"method": f"language model, {after}", "success_rate": summary["success_rate_after"], "env_steps": env_steps,
             "wall_s": summary["wall_s"]},
            {"method": "language model, before RL, greedy", "success_rate": greedy_success(summary["model"], config, rows),
             "env_steps": 0, "wall_s": 0.0},
            {"method": f"language model, {after}, greedy", "success_rate": greedy_success(str(run_dir / "model"), config, rows),
             "env_steps": env_steps, "wall_s": summary["wall_s"]}]


def greedy_success(model_dir: str, config: dict, rows: list[dict]) -> float:
    """The share of the rows' episodes that the model at model_dir wins playing its most likely move each turn."""
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    agent = resolve_agent("", config["environment_factory"], config["max_tool_calling_iterations"])
    sampling = SamplingConfig(config["max_completion_length"], temperature=0.0)
    return evaluate_on_prompts(model, tokenizer, rows, resolve_reward("environment"), sampling, 1, 0, agent=agent)["success_rate"]


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--lm-run", required=True, help="Run folder of train_rlhf.py --task frozenlake, maze or taxi")
    parser.add_argument("--seed", type=int, default=0, help="Q-learning's seed")
    parser.add_argument("--q-learning-steps", type=int, default=None, help="Q-learning's env steps (default: its preset's)")
    args = parser.parse_args()
    run_dir = Path(args.lm_run)
    if not (run_dir / "summary.json").is_file():
        raise ConfigError(f"{run_dir} has no summary.json; give the run folder of train_rlhf.py --task frozenlake (or maze)")
    config = json.loads((run_dir / "config.json").read_text())
    game = config.get("environment_factory")
    if game not in GAMES:
        raise ConfigError(f"{run_dir} trained on {game!r}, not a text game; accepted: a run of --task {' or --task '.join(GAMES)}")
    rows = load_prompt_rows(config["eval_prompts"])
    env_id = GAMES[game]["env_id"]
    start = time.perf_counter()
    planned = policy_success_rate(game, rows, optimal_policy(game))
    table = [{"method": "value iteration (the env's model)", "success_rate": planned, "env_steps": 0, "wall_s": time.perf_counter() - start}]
    policy, steps, seconds = q_learning_policy(env_id, run_dir / "q_learning", args.seed, args.q_learning_steps)
    table.append({"method": "Q-learning (epsilon-greedy)", "success_rate": policy_success_rate(game, rows, policy), "env_steps": steps,
                  "wall_s": seconds})
    table += language_model_rows(run_dir, config, rows)
    lines = [f"{env_id} as a text game, {len(rows)} evaluation episodes (the same seeds and starts for every method)", "",
             "| method | success rate | env steps | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['success_rate']:.3f} | {r['env_steps']:,} | {r['wall_s']:.1f} |" for r in table]
    (run_dir / "agents.md").write_text("\n".join(lines) + "\n")
    write_json(run_dir / "agents.json", {"game": game, "env_id": env_id, "episodes": len(rows), "rows": table})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
