# Every target sets itself up: `make setup` creates .venv and installs the project with the
# exact versions in constraints.txt (torch==2.13.0 is the CPU wheel), and is skipped when
# neither pyproject.toml nor constraints.txt changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
WEB_STAMP := $(VENV)/.installed-web
MUTATE_STAMP := $(VENV)/.installed-mutate

.PHONY: setup setup-bench setup-web rlhf-lander rlhf-lander-web test test-slow check-gpu demo demo-reasoning demo-agent demo-chat rlhf-loop demo-classic tutorials bench bench-rlhf bench-real-models mutate lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[dev,bench,web]"
	touch $@

$(WEB_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[dev,web]"
	touch $@

setup-web: $(WEB_STAMP)

setup-bench: $(BENCH_STAMP)

$(MUTATE_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[dev,mutate]"
	touch $@

# The peers of the bench extra (TRL, SB3; a minute's install) come too: the TRL parity tests feed TRL's own loss code,
# and the web extra: the browser tests drive the labelling page (in Debian's Chromium, which .ci/run installs).
test: setup-bench
	$(PY) -m pytest

test-slow: setup-bench
	$(PY) -m pytest -m slow

# The main job: build the default base model if absent (~1 min with bf16 units, ~2 min without; once), GRPO with
# the default reward (~20 s), eval samples before/after side by side, and the plot path.
demo: setup
	$(PY) scripts/train_rlhf.py --algo grpo --run-dir runs/demo-grpo --overwrite

# The second demo: GRPO on arithmetic with a reward that checks the answer; pass@1 and pass@8 on held-out problems
# before and after, and what was learned by problem type. Builds the arithmetic base model once (~2.5 min); about 4 min.
demo-reasoning: setup
	$(PY) scripts/train_rlhf.py --task arithmetic --run-dir runs/demo-reasoning --overwrite
	$(PY) scripts/arithmetic_breakdown.py runs/demo-reasoning

# A language model as an agent: FrozenLake (4x4, slippery) as a text game, a move and the square reached each turn. The
# base model learns the format from epsilon-greedy play (built once, ~1 min); GRPO makes it win; then a Q-table (value
# iteration, Q-learning) and the language model on the same 1,000 seeded episodes. The calculator: --task calculator.
demo-agent: setup
	$(PY) scripts/train_rlhf.py --task frozenlake --steps 120 --run-dir runs/demo-agent --overwrite
	$(PY) scripts/compare_game_agents.py --lm-run runs/demo-agent

# GRPO on a chat model: the built-in chat model (ChatML template, built once, ~1-2 min) on the same prompts as
# conversations; the rewards see each completion as an assistant turn, as TRL passes it.
demo-chat: setup
	$(PY) scripts/train_rlhf.py --task chat --run-dir runs/demo-chat --overwrite

# RLHF from labels: a simulated labeller who prefers shorter answers labels 50 pairs of the base model's completions
# (10% of them flipped), a reward model learns them, GRPO optimises it (23 s on 2 cores). Label them yourself:
# python scripts/rlhf_loop.py --criterion "prefer the shorter answer"
rlhf-loop: setup
	$(PY) scripts/rlhf_loop.py --simulate brevity --label-noise 0.1 --run-dir runs/rlhf-loop

# RLHF where it began (Christiano et al. 2017): PPO lands LunarLander from 2,000 comparisons of clips of its own behaviour
# by a simulated labeller (10% of them wrong), never seeing the env's reward (~2-4 min); then a GIF of a landing.
rlhf-lander: setup
	$(PY) scripts/train_from_preferences.py --env LunarLander-v3 --target-return 200 --run-dir runs/rlhf-lander --overwrite
	$(PY) scripts/evaluate_classic.py runs/rlhf-lander --episodes 20 --video

# The same with you as the labeller, at http://127.0.0.1:8000/ (keys 1 / 2 / t / s / q; q ends labelling, training goes on).
# Fewer labels than the simulated run: CartPole learns from about 100; pass ENV=LunarLander-v3 LABELS=2000 for the landing.
ENV ?= CartPole-v1
LABELS ?= 100
rlhf-lander-web: setup-web
	$(PY) scripts/train_from_preferences.py --env $(ENV) --max-labels $(LABELS) --labeller web --port 8000 \
		--run-dir runs/rlhf-web-$(ENV) --overwrite
	$(PY) scripts/evaluate_classic.py runs/rlhf-web-$(ENV) --episodes 20 --video

demo-classic: setup
	$(PY) scripts/train_classic.py --algo ppo --env CartPole-v1 --seed 1 --run-dir runs/demo-ppo-cartpole --overwrite
	$(PY) scripts/evaluate_classic.py runs/demo-ppo-cartpole --episodes 20

# Every tutorial's own experiment (classic_rl/tutorials.py), seed 1, one after another (~7 min):
# runs/tutorials/PRESET-seed1/ holds each run with its figures; the table compares each tutorial's number with ours.
tutorials: setup
	$(PY) scripts/run_tutorials.py

# Every benchmark of bench/README.md that has a speed target, one after another (~15 min), each rewriting its own files
# in bench/: what bf16 buys op by op, the demo from an empty cache, classic PPO against SB3 on CartPole (solving, and
# --same-hparams speed), PPO on LunarLander (200 within 300k steps and 60 s, seeds 1-5), GRPO against TRL.
# On a machine with a CUDA device: every trainer a few steps in fp32 and bf16, the fast decoder against generate, and
# 2 processes against 1 where two GPUs exist; writes bench/gpu.{md,json} (a few minutes).
check-gpu: setup
	$(PY) scripts/check_gpu.py

bench: setup-bench
	$(PY) scripts/bench_precision.py
	$(PY) scripts/bench_demo.py --repeats 3
	$(PY) scripts/bench_classic.py --envs CartPole-v1 --json bench/classic_cartpole.json --md bench/classic_cartpole.md
	$(PY) scripts/bench_classic.py --envs CartPole-v1 --same-hparams --json bench/classic_speed.json --md bench/classic_speed.md
	$(PY) scripts/bench_classic.py --envs LunarLander-v3 --impls ours --seeds 5 --json bench/classic_lunar_ours.json --md bench/classic_lunar_ours.md
	$(MAKE) bench-rlhf

# Real shapes with random weights, built once into the cache (GPT-2 124M; Qwen2 0.5B, vocabulary 151,936): what a GRPO
# step of 8 prompts x 8 completions of 64 tokens costs, LoRA (r 16) and full, ours against TRL's GRPOTrainer with peft,
# one at a time (~1.5 h): bench/real_models_*.{md,json}, read in bench/real-models.md.
REAL = --steps 3 --prompts-per-step 8 --num-generations 8 --max-completion-length 64 --threads 2 --impls ours trl --eval-every 0
bench-real-models: setup-bench
	$(PY) scripts/bench_rlhf.py --shape gpt2-124m --use-peft $(REAL) --json bench/real_models_gpt2_lora.json --md bench/real_models_gpt2_lora.md
	$(PY) scripts/bench_rlhf.py --shape gpt2-124m $(REAL) --json bench/real_models_gpt2_full.json --md bench/real_models_gpt2_full.md
	$(PY) scripts/bench_rlhf.py --shape qwen2-0.5b --use-peft --gradient-checkpointing --precisions bf16 $(REAL) \
		--json bench/real_models_qwen2_lora.json --md bench/real_models_qwen2_lora.md
	$(PY) scripts/bench_rlhf.py --shape gpt2-124m --use-peft --gradient-checkpointing --precisions bf16 $(REAL) \
		--json bench/real_models_gpt2_lora_checkpointing.json --md bench/real_models_gpt2_lora_checkpointing.md
	$(PY) scripts/bench_rlhf.py --shape qwen2-0.5b --gradient-checkpointing --precisions bf16 $(REAL) \
		--json bench/real_models_qwen2_full.json --md bench/real_models_qwen2_full.md
	$(PY) scripts/bench_rlhf.py --shape qwen2-0.5b --use-peft --gradient-checkpointing --precisions fp32 $(REAL) \
		--json bench/real_models_qwen2_lora_fp32.json --md bench/real_models_qwen2_lora_fp32.md

# Our GRPO against TRL's GRPOTrainer on the demo's work (100 steps of 8 prompts x 8 completions), each in fp32 and, where
# the CPU has bf16 units, bf16, 3 repeats: bench/rlhf.{md,json} (~7 min).
bench-rlhf: setup-bench
	$(PY) scripts/bench_rlhf.py --steps 100 --prompts-per-step 8 --max-completion-length 40 --threads 2 --repeats 3 --impls ours trl

# Mutation testing (~25 min on 2 cores, not part of make test): mutmut plants small bugs in classic_rl/core.py and
# rlhf_toy/algorithms/{grpo,ppo}.py and rlhf_toy/rewards/functions.py, runs the fast tests that reach each, and lists the mutants no test caught.
mutate: $(MUTATE_STAMP)
	rm -rf mutants .mutmut-cache
	RLHF_TOY_TEST_CACHE=$(CURDIR)/.mutmut-cache $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache mutants .mutmut-cache
