#!/usr/bin/env python
"""Reload a classic run's policy and report its greedy return; optionally record an episode.

    python scripts/evaluate_classic.py runs/ppo-cartpole --episodes 20 --video
"""

import json
from pathlib import Path

import torch

from classic_rl import envs
from classic_rl.algos import ALGOS
from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.nets import load_agent
from classic_rl.training import EVAL_MODES, ClassicConfig, policy_returns, require_policy_to_sample


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("run_dir", help="A folder written by scripts/train_classic.py")
    parser.add_argument("--episodes", type=int, default=10, help="Evaluation episodes (run side by side)")
    parser.add_argument("--seed", type=int, default=12345, help="Seed of the evaluation episodes")
    parser.add_argument("--eval-mode", choices=EVAL_MODES, default="greedy", help="Act greedily or sample the policy's actions")
    parser.add_argument("--video", action="store_true", help="Also write RUN_DIR/episode.gif of one greedy episode")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} has no config.json; give a folder written by scripts/train_classic.py")
    if args.episodes <= 0:
        raise ConfigError(f"--episodes must be > 0, got {args.episodes}")
    try:
        saved = json.loads(config_path.read_text())
        env_id = saved["env"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"{config_path} is not a config written by scripts/train_classic.py (no JSON with an env)") from None
    config_cls = ALGOS.get(saved.get("algo"), (ClassicConfig,))[0]
    require_policy_to_sample(args.eval_mode, config_cls.deterministic_policy)
    if args.video:
        envs.check_renders_frames(env_id)
    torch.set_num_threads(1)
    model = load_agent(run_dir / "policy.safetensors")
    returns = policy_returns(model, env_id, args.episodes, args.seed, args.eval_mode)
    print(f"{env_id}: {args.eval_mode} return {returns.mean():.1f} +- {returns.std():.1f} over {args.episodes} episodes "
          f"(min {returns.min():.1f}, max {returns.max():.1f})")
    if args.video:
        total, frames = envs.record_gif(model.act, env_id, args.seed, run_dir / "episode.gif")
        print(f"video: {run_dir / 'episode.gif'} ({frames} frames, return {total:.1f})")


if __name__ == "__main__":
    main()
