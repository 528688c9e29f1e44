"""One GRPO update on a fixed rollout, in however many processes this was launched with; the main
process saves the updated weights. tests/test_rlhf.py compares a 2-process run with a 1-process run.

    python tests/grpo_update_in_processes.py MODEL_DIR OUT.safetensors
    accelerate launch --multi_gpu --num_processes 2 tests/grpo_update_in_processes.py MODEL_DIR OUT.safetensors --cpu
"""

import dataclasses
import sys

import torch
from safetensors.torch import save_file

from rlhf_toy.algorithms.grpo import GRPOConfig, grpo_update
from rlhf_toy.distributed import leave_processes, make_accelerator
from rlhf_toy.generation.rollout import sample_rollout
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.rewards.functions import resolve_reward

model_dir, out_path = sys.argv[1], sys.argv[2]
cfg = GRPOConfig(prompts_per_step=4, num_generations=4, max_completion_length=12, loss_type="dapo", scale_rewards="batch",
                 beta=0.0, learning_rate=1e-2)
accelerator = make_accelerator(cpu=True)
torch.manual_seed(0)  # every process samples the same full batch, then keeps its share
tokenizer, policy = load_tokenizer(model_dir), load_model(model_dir)
prompts = [p for p in ["Describe a fox.", "Tell me about Ada.", "Write about a cave.", "Describe a kind owl."] for _ in range(4)]
rollout = sample_rollout(policy, tokenizer, prompts, cfg.sampling)
rewards = torch.tensor(resolve_reward("length")(prompts, rollout.completions))
share = slice(accelerator.process_index * 16 // accelerator.num_processes, (accelerator.process_index + 1) * 16 // accelerator.num_processes)
local = dataclasses.replace(rollout, prompts=prompts[share], completions=rollout.completions[share],
                            **{f: getattr(rollout, f)[share] for f in ("input_ids", "attention_mask", "completion_mask",
                                                                       "sampling_logprobs", "is_truncated")})
optimizer = torch.optim.SGD(policy.parameters(), lr=cfg.learning_rate)  # SGD: the update is the gradient itself
policy, optimizer = accelerator.prepare(policy, optimizer)
grpo_update(policy, None, optimizer, accelerator, local, rewards[share], cfg)
if accelerator.is_main_process:
    save_file({k: v.contiguous() for k, v in accelerator.unwrap_model(policy).state_dict().items()
               if k != "lm_head.weight"}, out_path)  # lm_head is tied to the embedding
accelerator.wait_for_everyone()
del policy, optimizer
leave_processes(accelerator)
