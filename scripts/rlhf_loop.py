#!/usr/bin/env python
"""RLHF from your own judgements, in one command: label pairs of the base model's completions, train a
reward model on them, fine-tune with GRPO against it, and see the samples before and after scored by
the reward model and by a rule judge of the same criterion.

    python scripts/rlhf_loop.py --criterion "prefer the shorter answer"       # you label 50 pairs (~5 min)
    python scripts/rlhf_loop.py --simulate brevity --label-noise 0.1          # a rule labels them (make rlhf-loop)

RUN_DIR/labels.jsonl holds the labels: quit labelling at any point and the same command continues it
(the later stages run again). RUN_DIR/reward_model and RUN_DIR/grpo are ordinary run folders;
RUN_DIR/summary.json and RUN_DIR/samples.md hold the result.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classic_rl.infra.cli import cli, config_field, parse_config
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.run_folder import atomic_write, write_json
from rlhf_toy.algorithms.grpo import GRPOConfig
from rlhf_toy.distributed import require_one_process
from rlhf_toy.online import train
from rlhf_toy.rewards.functions import answer_text, resolve_reward
from rlhf_toy.rewards.labelling import LabelConfig, run_labelling
from rlhf_toy.rewards.reward_model import RewardModelConfig, train_reward_model


@dataclass
class LoopConfig:
    model: str | None = config_field(None, "Model to label and fine-tune (default: the cached default base model)")
    simulate: str | None = config_field(None, "Label with this reward instead of a person (e.g. brevity); none: you label")
    criterion: str = config_field("prefer the shorter answer", "The rule you label by, shown above every pair")
    judge: str = config_field("brevity", "The rule that measures the result: the criterion written as a reward (never optimised)")
    n: int = config_field(50, "Pairs to label")
    label_noise: float = config_field(0.0, "With --simulate: probability of flipping a preference")
    rm_steps: int = config_field(100, "Reward model optimizer steps")
    steps: int = config_field(100, "GRPO steps against the reward model")
    seed: int = config_field(0, "Seeds labelling, the reward model and GRPO")
    run_dir: str = config_field("runs/rlhf-loop", "Output folder (labels.jsonl in it is continued, the rest rewritten)")

    def __post_init__(self):
        resolve_reward(self.judge)  # an unknown judge is refused before any labelling
        if self.simulate:
            resolve_reward(self.simulate)


def table_cell(text: str, width: int = 90) -> str:
    return text.strip().replace("|", "/").replace("\n", " ")[:width]


def sample_table(before: list[dict], after: list[dict], judge, n: int = 8) -> str:
    """Markdown: the same eval prompts before and after, each completion with the reward model's and the judge's score."""
    lines = ["| prompt | before | RM | judge | after | RM | judge |", "|---|---|---|---|---|---|---|"]
    for b, a in list(zip(before, after, strict=True))[:n]:
        scores = judge([b["prompt"], a["prompt"]], [b["completion"], a["completion"]])
        lines.append(f"| {b['prompt']} | {table_cell(b['completion'])} | {b['reward']:.2f} | {scores[0]:.2f} | "
                     f"{table_cell(a['completion'])} | {a['reward']:.2f} | {scores[1]:.2f} |")
    return "\n".join(lines) + "\n"


def mean_words(rows: list[dict]) -> float:
    return float(np.mean([len(answer_text(r["completion"]).split()) for r in rows]))


@cli
def main() -> None:
    require_one_process("rlhf_loop.py")
    cfg = parse_config(LoopConfig, description=__doc__)
    run_dir = Path(cfg.run_dir)
    labels = run_labelling(LabelConfig(out=str(run_dir / "labels.jsonl"), n=cfg.n, simulate=cfg.simulate, label_noise=cfg.label_noise,
                                       criterion=None if cfg.simulate else cfg.criterion, seed=cfg.seed, model=cfg.model))
    if labels["labelled"] < cfg.n:
        raise ConfigError(f"{labels['labelled']} of {cfg.n} pairs are labelled; run the same command again to continue labelling")
    rm = train_reward_model(RewardModelConfig(model=cfg.model, preferences=str(run_dir / "labels.jsonl"), gold_reward=cfg.judge, steps=cfg.rm_steps,
                                              eval_every=max(1, cfg.rm_steps // 4), seed=cfg.seed, run_dir=str(run_dir / "reward_model"),
                                              overwrite=True))
    grpo = GRPOConfig(model=cfg.model, reward=f"rm:{run_dir / 'reward_model' / 'model'}", gold_reward=cfg.judge, steps=cfg.steps,
                      seed=cfg.seed, run_dir=str(run_dir / "grpo"), overwrite=True, log_completions_every=0)
    rl = train(grpo)
    samples = json.loads((run_dir / "grpo" / "eval_samples.json").read_text())
    summary = {"labels": labels["labelled"], "labeller": "simulate:" + cfg.simulate if cfg.simulate else "human",
               "label_noise": cfg.label_noise, "judge": cfg.judge, "rm_eval_accuracy": rm["eval_accuracy"], "rm_spearman": rm["spearman"],
               "rm_score_before": rl["reward_before"], "rm_score_after": rl["reward_after"],
               "judge_before": rl["components_before"]["gold"], "judge_after": rl["components_after"]["gold"],
               "words_before": mean_words(samples["before"]), "words_after": mean_words(samples["after"]),
               "kl_final": rl["kl_final"], "rm_train_s": rm["train_s"], "grpo_wall_s": rl["wall_s"],
               "config": dataclasses.asdict(cfg)}
    write_json(run_dir / "summary.json", summary)
    k = grpo.eval_samples_per_prompt
    table = sample_table(samples["before"][::k], samples["after"][::k], resolve_reward(cfg.judge))
    atomic_write(run_dir / "samples.md", lambda tmp: Path(tmp).write_text(table))
    accuracy = "none (no held-out pair with a preference)" if rm["eval_accuracy"] is None else f"{rm['eval_accuracy']:.2f}"
    print(f"\n{labels['labelled']} labels -> reward model (held-out accuracy {accuracy}, Spearman with "
          f"{cfg.judge} {rm['spearman']:.2f}) -> GRPO: judge {cfg.judge} {summary['judge_before']:.3f} -> {summary['judge_after']:.3f}, "
          f"words per answer {summary['words_before']:.1f} -> {summary['words_after']:.1f}; samples: {run_dir / 'samples.md'}")


if __name__ == "__main__":
    main()
