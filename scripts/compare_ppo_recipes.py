#!/usr/bin/env python
"""RLHF as the ChatGPT tutorial describes it, one piece at a time: PPO against a reward model trained on
the shipped pairs, with the default value model (a copy of the policy's trunk), with the value model
started from the reward model (--critic rm), with InstructGPT's pretraining mix (--ptx-coef), and both.

    python scripts/compare_ppo_recipes.py --seeds 1 2 3 --out bench/ppo_recipes     # ~20 minutes on 2 cores

Every fine-tuned model is measured alike (rlhf_toy.evaluation.FixedEvaluation): the rule judge
length,format (never optimised) on fresh samples of the eval prompts, KL to the base model, and the
language-model loss on pretraining text (fluency kept). Writes OUT.json and OUT.md.
"""

import json
import sys
from pathlib import Path

import numpy as np

from classic_rl.infra.cli import cli, run_in_own_process, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.machine import machine
from classic_rl.infra.run_folder import atomic_write, write_json
from rlhf_toy.evaluation import FixedEvaluation

SCRIPTS = Path(__file__).resolve().parent
JUDGE = "length,format"


def variants(ptx_coef: float) -> dict[str, list[str]]:
    return {"default critic": [], "--critic rm": ["--critic", "rm"], f"--ptx-coef {ptx_coef:g}": ["--ptx-coef", str(ptx_coef)],
            f"--critic rm --ptx-coef {ptx_coef:g}": ["--critic", "rm", "--ptx-coef", str(ptx_coef)]}


def run(script: str, args: list[str]) -> dict:
    run_in_own_process(SCRIPTS / script, args)
    return json.loads((Path(args[args.index("--run-dir") + 1]) / "summary.json").read_text())


def markdown(rows: list[dict], base: dict, command: str) -> str:
    lines = [f"Measured by `{command}` on {machine()}, one run at a time. Gold: {JUDGE} (never optimised) on 4 fresh samples "
             "of each eval prompt; KL: k1 to the base model per sequence on those samples; LM loss: next-token loss on 64 "
             f"blocks of pretraining text. Base model: gold {base['gold']:.3f}, LM loss {base['lm_loss']:.3f}.", "",
             "| PPO | seed | gold after | KL per sequence | LM loss | explained variance, first 10 steps | training s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['seed']} | {r['gold']:.3f} | {r['kl_sequence']:.2f} | {r['lm_loss']:.3f} | "
              f"{r['early_explained_variance']:.2f} | {r['wall_s']:.0f} |" for r in rows]
    lines += ["", "| PPO | gold after, mean | KL per sequence, mean | LM loss, mean |", "|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        lines.append(f"| {variant} | {np.mean([r['gold'] for r in mine]):.3f} | {np.mean([r['kl_sequence'] for r in mine]):.2f} | "
                     f"{np.mean([r['lm_loss'] for r in mine]):.3f} |")
    return "\n".join(lines) + "\n"


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Seeds of each variant")
    parser.add_argument("--steps", type=int, default=100, help="PPO steps of every run")
    parser.add_argument("--ptx-coef", type=float, default=0.5, help="The pretraining-mix coefficient of the ptx variants")
    parser.add_argument("--runs-dir", default="runs/ppo-recipes", help="Parent folder of the run folders")
    parser.add_argument("--out", default="bench/ppo_recipes", help="Write OUT.json and OUT.md")
    args = parser.parse_args()
    if args.steps <= 0 or args.ptx_coef <= 0:
        raise ConfigError("--steps and --ptx-coef must be > 0")
    runs_dir = Path(args.runs_dir)
    rm = run("train_reward_model.py", ["--run-dir", str(runs_dir / "rm"), "--overwrite"])
    scorer, rows = FixedEvaluation(JUDGE), []
    base = scorer(scorer.base_dir)
    for seed in args.seeds:
        for name, flags in variants(args.ptx_coef).items():
            run_dir = runs_dir / f"{name.replace('--', '').replace(' ', '-')}-seed{seed}"
            summary = run("train_rlhf.py", ["--algo", "ppo", "--reward", f"rm:{runs_dir / 'rm' / 'model'}", "--gold-reward", JUDGE,
                                            "--steps", str(args.steps), "--seed", str(seed), "--log-completions-every", "0",
                                            "--run-dir", str(run_dir), "--overwrite", *flags])
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            early = [m["explained_variance"] for m in metrics if "explained_variance" in m][:10]
            row = {"variant": name, "seed": seed, "wall_s": summary["wall_s"], "early_explained_variance": float(np.mean(early)),
                   **scorer(run_dir / "model")}
            rows.append(row)
            print(f"{name} seed {seed}: gold {row['gold']:.3f}, KL {row['kl_sequence']:.2f}, LM loss {row['lm_loss']:.3f}", flush=True)
    command = "python scripts/compare_ppo_recipes.py " + " ".join(sys.argv[1:])
    table = markdown(rows, base, command.strip())
    print(table)
    write_json(f"{args.out}.json", {"command": command, "machine": machine(), "reward_model": rm, "base": base, "rows": rows})
    atomic_write(f"{args.out}.md", lambda tmp: Path(tmp).write_text("# PPO as InstructGPT: critic from the reward model, "
                                                                     "pretraining mix\n\n" + table))


if __name__ == "__main__":
    main()
