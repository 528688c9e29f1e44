"""TRL's numbers on TRL's batch: every loss offered under a TRL name, fed to TRL 1.16's own loss code and to ours on
the same model, the same tokens and the same old and reference log-probs, agrees to 1e-6 in loss and gradient.

TRL is a peer in the bench extra, which `make test` installs (skipped with a message where it is absent). The
batches have no left padding: TRL's training
forward passes no position ids, so on a left-padded row a GPT-2 (absolute positions) is scored at other positions
than generate sampled it at; the project passes generate's (test_trl_scores_left_padded_rows_at_shifted_positions).
"""

import copy
import dataclasses

import pytest
import torch

from rlhf_toy.algorithms import rloo
from rlhf_toy.algorithms.dpo import DPO_LOSS_TYPES, DPOConfig, dpo_batch_loss
from rlhf_toy.algorithms.grpo import (
    LOSS_TYPES,
    GRPOConfig,
    gamma_weights,
    gdpo_advantages,
    group_advantages,
    minibatch_loss,
)
from rlhf_toy.algorithms.rloo import RLOOConfig, rloo_advantages, sequence_loss
from rlhf_toy.data import Labels
from rlhf_toy.generation.rollout import completion_logprobs, sample_rollout
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.rewards.reward_model import labels_loss

trl = pytest.importorskip("trl", reason="TRL is the bench extra's: make setup-bench (make test installs it)")
datasets = pytest.importorskip("datasets")

B, G = 8, 4  # 2 prompt groups of 4 completions


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, our_model, their_model, tolerance: float = 1e-6) -> None:
    """Losses within tolerance (relative where they exceed 1: CISPO's and VESPO's multiply log-probs of -5 and below,
    which the two forwards round apart by a few 1e-7), and the gradients of every parameter within it (absolute)."""
    assert abs(ours.item() - theirs.item()) < tolerance * max(1.0, abs(theirs.item())), (ours.item(), theirs.item())
    ours.backward()
    theirs.backward()
    for (name, mine), other in zip(our_model.named_parameters(), their_model.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, other.grad, atol=tolerance, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    our_model.zero_grad(set_to_none=True)
    their_model.zero_grad(set_to_none=True)


class Processes:
    """TRL's accelerator as process `index` of `count` would see it (only its counts differ): what a process's loss
    depends on, the rest of a multi-process run being DDP's average of the processes' gradients."""

    def __init__(self, accelerator, count: int):
        self._accelerator, self.num_processes = accelerator, count

    def __getattr__(self, name):
        return getattr(self._accelerator, name)


@pytest.fixture(scope="module")
def grpo_batch(nano_dir):
    """(rollout, advantages, old, ref): B completions of one prompt (no left padding), advantages from made-up rewards,
    old log-probs away from the policy's (so that both clip branches are taken) and a reference's that differ."""
    policy, tokenizer = load_model(nano_dir), load_tokenizer(nano_dir)
    torch.manual_seed(0)
    rollout = sample_rollout(policy, tokenizer, ["Describe a fox and the lake."] * B, SamplingConfig(max_new_tokens=10))
    assert rollout.is_truncated.any() and not rollout.is_truncated.all() and rollout.attention_mask[:, 0].all()
    with torch.no_grad():
        logp, _ = completion_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.completion_mask)
    old = (logp + 0.3 * torch.randn_like(logp)) * rollout.completion_mask
    ref = (logp + 0.5 * torch.randn_like(logp)) * rollout.completion_mask
    advantages = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.8, -0.1, 0.0, 1.5])
    return rollout, advantages, old, ref


def trl_grpo_trainer(model_dir: str, cfg: GRPOConfig, out_dir, processes: int = 1):
    """TRL's GRPOTrainer set as cfg says: a generation batch of B completions in cfg.num_minibatches optimizer steps."""
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer
    args = TRLGRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=B // cfg.num_minibatches // processes, gradient_accumulation_steps=1,
        steps_per_generation=cfg.num_minibatches, num_generations=G, num_iterations=cfg.num_iterations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, beta=cfg.beta, epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type, use_bias_correction_kl=cfg.use_bias_correction_kl,
        importance_sampling_level=cfg.importance_sampling_level, delta=cfg.delta, sapo_temperature_pos=cfg.sapo_temperature_pos,
        sapo_temperature_neg=cfg.sapo_temperature_neg, vespo_k_pos=cfg.vespo_k_pos, vespo_lambda_pos=cfg.vespo_lambda_pos,
        vespo_k_neg=cfg.vespo_k_neg, vespo_lambda_neg=cfg.vespo_lambda_neg, top_entropy_quantile=cfg.top_entropy_quantile,
        entropy_coef=cfg.entropy_coef, use_adaptive_entropy=cfg.use_adaptive_entropy, entropy_coef_min=cfg.entropy_coef_min,
        entropy_coef_max=cfg.entropy_coef_max, entropy_coef_delta=cfg.entropy_coef_delta, entropy_target=cfg.entropy_target,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, disable_dropout=True)
    trainer = GRPOTrainer(model=load_model(model_dir), reward_funcs=lambda prompts, completions, **_: [0.0] * len(prompts), args=args,
                          train_dataset=datasets.Dataset.from_dict({"prompt": ["x"] * B}), processing_class=load_tokenizer(model_dir))
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test does not run
    trainer.model.train()
    return trainer


GRPO_CASES = [dict(loss_type=loss_type) for loss_type in LOSS_TYPES] + [
    dict(loss_type="dapo", epsilon=0.1, epsilon_high=0.28, temperature=0.7),
    dict(loss_type="grpo", beta=0.0),
    dict(loss_type="bnpo", use_bias_correction_kl=False),
    dict(loss_type="dapo", num_minibatches=2),
    dict(loss_type="grpo", num_minibatches=2, num_iterations=2),
    dict(loss_type="dapo", processes=2),
    dict(loss_type="dr_grpo", processes=2, num_minibatches=2),
    # the objectives beyond the clipped one, with old log-probs away from the policy's (several steps), so that rho != 1
    dict(loss_type="cispo", epsilon_high=5.0, num_minibatches=2),
    dict(loss_type="sapo", sapo_temperature_pos=0.8, sapo_temperature_neg=1.3, num_minibatches=2),
    dict(loss_type="vespo", num_minibatches=2),
    dict(loss_type="vespo", vespo_k_pos=1.5, vespo_lambda_neg=2.5, num_minibatches=2, processes=2),
    dict(loss_type="dapo", delta=1.3, epsilon_high=0.28, num_minibatches=2),
    dict(loss_type="grpo", importance_sampling_level="sequence", num_minibatches=2),  # GSPO
    dict(loss_type="luspo", importance_sampling_level="sequence", num_minibatches=2),
    dict(loss_type="dapo", importance_sampling_level="sequence", delta=1.2, num_minibatches=2),
    dict(loss_type="dapo", top_entropy_quantile=0.2),  # the high-entropy fifth (Wang et al. 2025)
    dict(loss_type="grpo", top_entropy_quantile=0.5, num_minibatches=2, processes=2),
    # the entropy bonus, fixed and adapted (Skywork-OR1): the target above the model's entropy, so that the controller
    # applies no bonus on the first minibatch, raises the coefficient after it and applies it from the second on
    dict(loss_type="dapo", entropy_coef=0.05),
    dict(loss_type="bnpo", entropy_coef=0.05, top_entropy_quantile=0.5, num_minibatches=2),
    dict(loss_type="grpo", use_adaptive_entropy=True, entropy_coef=0.3, entropy_coef_delta=0.1, entropy_target=50.0,
         num_minibatches=2, processes=2),
    dict(loss_type="dapo", use_adaptive_entropy=True, entropy_coef=0.3, entropy_coef_delta=0.1, entropy_coef_max=0.35,
         entropy_target=50.0, num_minibatches=2, num_iterations=2),
]


@pytest.mark.parametrize("case", GRPO_CASES, ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items()))
def test_grpo_loss_equals_trls(case, grpo_batch, nano_dir, tmp_path):
    """Each minibatch of each process: TRL's _compute_loss and our minibatch_loss, old log-probs given where the update
    takes several steps (TRL's old_per_token_logps), else the forward's own (None on both sides)."""
    rollout, advantages, old, ref = grpo_batch
    case = dict(case)
    processes = case.pop("processes", 1)
    cfg = GRPOConfig(prompts_per_step=B // G, num_generations=G, max_completion_length=10, **{"beta": 0.04, **case})
    trainer = trl_grpo_trainer(nano_dir, cfg, tmp_path, processes)
    trainer.accelerator = Processes(trainer.accelerator, processes)
    policy = load_model(nano_dir).train()
    several_steps = cfg.num_minibatches * cfg.num_iterations > 1
    old_logprobs = old if several_steps else None
    ref_logprobs = ref if cfg.beta else None
    mask = rollout.completion_mask
    prompt = rollout.prompt_length
    share = B // processes
    entropy_control = cfg.entropy_controller()  # one controller over every minibatch, as the trainer's
    for process in range(processes):  # each process holds whole groups, and splits its share into minibatches
        rows_of_process = torch.arange(process * share, (process + 1) * share)
        tokens = mask.sum()  # the generation batch's tokens on all processes
        for rows in rows_of_process.split(share // cfg.num_minibatches):
            ours, stats, _ = minibatch_loss(policy, rollout, rows, advantages, old_logprobs, ref_logprobs, mask,
                                            tokens / (processes * cfg.num_minibatches), cfg, entropy_control=entropy_control)
            inputs = {"prompt_ids": rollout.input_ids[rows, :prompt], "prompt_mask": rollout.attention_mask[rows, :prompt],
                      "completion_ids": rollout.completion_ids[rows], "completion_mask": mask[rows].long(),
                      "advantages": advantages[rows], "num_items_in_batch": tokens,
                      "old_per_token_logps": old_logprobs[rows] if several_steps else None}
            if cfg.beta:
                inputs["ref_per_token_logps"] = ref[rows]
            theirs = trainer._compute_loss(trainer.model, inputs)
            # VESPO's weight phi(w) moves by (k - lambda w) times any change of the sequence's summed log-ratio, so the few
            # 1e-7 by which the two forwards' log-probs differ reach 1e-6 there (its formula: test_vespo_weights_equal_trls)
            assert_same(ours, theirs, policy, trainer.model, tolerance=1e-5 if cfg.loss_type == "vespo" else 1e-6)
            assert entropy_control.value == pytest.approx(trainer.entropy_coef, abs=1e-12)
    if cfg.use_adaptive_entropy:  # the controller moved, and its bonus was applied
        assert entropy_control.value != cfg.entropy_coef and stats["entropy_coef_applied"] > 0


class RecordedRewards:
    """Two reward functions for TRL's trainers that record what they return (TRL hands back only advantages): a count of
    letters mod 3, and whether a completion has more than 3 spaces (a small spread)."""

    def __init__(self):
        self.seen = []
        self.functions = [self.letters, self.long]

    def letters(self, prompts, completions, **_):
        self.seen.append([float(sum(c.isalpha() for c in text) % 3) for text in completions])
        return self.seen[-1]

    def long(self, prompts, completions, **_):
        self.seen.append([float(text.count(" ") > 3) for text in completions])
        return self.seen[-1]

    @property
    def per_function(self) -> torch.Tensor:
        return torch.tensor(self.seen).T


@pytest.mark.parametrize("aggregation, scale_rewards", [("normalize_then_sum", "group"), ("sum_then_normalize", "group"),
                                                         ("sum_then_normalize", "batch"), ("sum_then_normalize", "none")])
def test_advantages_of_several_rewards_equal_trls(aggregation, scale_rewards, nano_dir, tmp_path):
    """TRL's generation step samples and scores 2 groups with 2 weighted rewards (one with a small spread, where GDPO and
    the plain sum differ); our advantages of the rewards its functions returned equal the ones it hands the loss."""
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer
    rewards = RecordedRewards()
    args = TRLGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=B, num_generations=G, max_completion_length=10,
                         multi_objective_aggregation=aggregation, scale_rewards=scale_rewards, reward_weights=[0.7, 0.3],
                         use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    prompts = [{"prompt": "Describe a fox."}] * G + [{"prompt": "Tell me about Ada."}] * G
    trainer = GRPOTrainer(model=load_model(nano_dir), reward_funcs=rewards.functions, args=args, processing_class=load_tokenizer(nano_dir),
                          train_dataset=datasets.Dataset.from_list(prompts))
    torch.manual_seed(0)
    theirs = trainer._generate_and_score_completions(prompts)["advantages"]
    rewards_per_func = rewards.per_function
    assert len(set(rewards_per_func[:, 0].tolist())) > 1 and len(set(rewards_per_func[:, 1].tolist())) > 1
    weights = torch.tensor([0.7, 0.3])
    if aggregation == "normalize_then_sum":
        ours, _ = gdpo_advantages(rewards_per_func, weights, G)
    else:
        ours, _ = group_advantages((rewards_per_func * weights).sum(1), G, scale_rewards)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def trl_rloo_trainer(model_dir: str, cfg: RLOOConfig, out_dir, reward_funcs, weights=None, processes: int = 1):
    """TRL's RLOOTrainer set as cfg says, on B completions of one prompt."""
    from trl import RLOOConfig as TRLRLOOConfig
    from trl import RLOOTrainer
    args = TRLRLOOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=B // cfg.num_minibatches // processes, gradient_accumulation_steps=1,
        steps_per_generation=cfg.num_minibatches, num_generations=G, num_iterations=cfg.num_iterations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, beta=cfg.beta, epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high, normalize_advantages=cfg.normalize_advantages, reward_clip_range=cfg.reward_clip_range,
        reward_weights=weights, use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = RLOOTrainer(model=load_model(model_dir), reward_funcs=reward_funcs, args=args, processing_class=load_tokenizer(model_dir),
                          train_dataset=datasets.Dataset.from_dict({"prompt": ["Describe a fox and the lake."] * B}))
    trainer.model.train()
    return trainer


RLOO_CASES = [dict(), dict(epsilon_high=0.28, num_minibatches=2), dict(epsilon=0.1, temperature=0.7),
              dict(num_minibatches=2, processes=2)]  # processes: each process's share of the batch, as a process sees it


def rloo_trainer_of_case(case: dict, nano_dir, out_dir):
    """(cfg, processes, TRL's RLOOTrainer) of a case of RLOO_CASES."""
    case = dict(case)
    processes = case.pop("processes", 1)
    cfg = RLOOConfig(prompts_per_step=B // G, num_generations=G, max_completion_length=10, **case)
    return cfg, processes, trl_rloo_trainer(nano_dir, cfg, out_dir, lambda prompts, completions, **_: [0.0] * len(prompts),
                                            processes=processes)


def assert_rloo_losses_equal(cfg, processes: int, trainer, policy, grpo_batch, tolerance: float) -> None:
    """Each minibatch of each process: TRL's RLOO _compute_loss (one ratio per completion, old log-probs away from the
    policy's so that both clip branches are taken) and ours on `policy`, in loss and gradient."""
    rollout, advantages, old, _ = grpo_batch
    mask, prompt, share = rollout.completion_mask, rollout.prompt_length, B // processes
    for process in range(processes):
        for rows in torch.arange(process * share, (process + 1) * share).split(share // cfg.num_minibatches):
            ours, _, _ = sequence_loss(policy, rollout, rows, advantages, old, mask, cfg)
            theirs = trainer._compute_loss(trainer.model, {
                "prompt_ids": rollout.input_ids[rows, :prompt], "prompt_mask": rollout.attention_mask[rows, :prompt],
                "completion_ids": rollout.completion_ids[rows], "completion_mask": mask[rows].long(),
                "old_logps": (old[rows] * mask[rows]).sum(1), "advantages": advantages[rows]})
            assert_same(ours, theirs, policy, trainer.model, tolerance)


@pytest.mark.parametrize("case", RLOO_CASES, ids=str)
def test_rloo_loss_equals_trls(case, grpo_batch, nano_dir, tmp_path):
    """Each forward our own: RLOO's ratio is the exponential of a sum over the completion's log-probs, so the two
    forwards' rounding adds up over its tokens and scales the whole gradient: on an EPYC the losses were 1.8-3.5e-6
    apart and one gradient element of 0.7 by 1.9e-5 (all under 1e-6 on a Xeon); at 0.7 the policy's log-probs are also
    far from the old ones taken at 1, ratios of 4 on average. A wrong term moves them by percents. The next two tests
    split it at 1e-6: the same log-probs give the same loss, and the log-probs are the same token by token."""
    cfg, processes, trainer = rloo_trainer_of_case(case, nano_dir, tmp_path)
    assert_rloo_losses_equal(cfg, processes, trainer, load_model(nano_dir).train(), grpo_batch, tolerance=5e-5)


def trl_token_logprobs(trainer, model, input_ids, attention_mask, completion_mask, with_entropy: bool):
    """(token log-probs, entropies or None) `[B, T]` of the completions from TRL's own forward (its chunked fp32 LM head)."""
    logp, entropy, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, completion_mask.shape[1],
                                                                   compute_entropy=with_entropy)
    return logp, entropy


@pytest.mark.parametrize("case", RLOO_CASES, ids=str)
def test_rloo_loss_of_trls_log_probs_equals_trls(case, grpo_batch, nano_dir, tmp_path, monkeypatch):
    """Our sequence_loss reading its token log-probs from TRL's own forward (its fused LM head in fp32, on a copy of
    TRL's model): what each does with the log-probs, the loss math alone, agrees to 1e-6 in loss and gradient."""
    cfg, processes, trainer = rloo_trainer_of_case(case, nano_dir, tmp_path)

    def trls_logprobs(model, input_ids, attention_mask, completion_mask, temperature, with_entropy):
        return trl_token_logprobs(trainer, model, input_ids, attention_mask, completion_mask, with_entropy)
    monkeypatch.setattr(rloo, "completion_logprobs", trls_logprobs)
    assert_rloo_losses_equal(cfg, processes, trainer, copy.deepcopy(trainer.model), grpo_batch, tolerance=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_log_probs_equal_trls_fused_lm_head(temperature, grpo_batch, nano_dir, tmp_path):
    """Our completion log-probs against TRL's chunked fp32 LM head, token by token, to 1e-6 (relative where they
    exceed 1, as assert_same: a log-prob of -5 is rounded to a few 1e-7 either way); the entropies to 1e-5: both take
    logsumexp(z) - E_p[z], a difference of two numbers the size of the largest logits (about 10 at temperature 0.7),
    whose fp32 rounding came to 4e-6 on an EPYC."""
    rollout = grpo_batch[0]
    _, _, trainer = rloo_trainer_of_case(dict(temperature=temperature), nano_dir, tmp_path)
    mask = rollout.completion_mask
    with torch.no_grad():
        ours, our_entropy = completion_logprobs(load_model(nano_dir).train(), rollout.input_ids, rollout.attention_mask, mask,
                                                temperature, with_entropy=True)
        theirs, their_entropy = trl_token_logprobs(trainer, trainer.model, rollout.input_ids, rollout.attention_mask, mask, True)
    torch.testing.assert_close(ours * mask, theirs * mask, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(our_entropy * mask, their_entropy * mask, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [dict(), dict(normalize_advantages=True, reward_clip_range=[0.0, 1.5])], ids=str)
def test_rloo_advantages_equal_trls(case, nano_dir, tmp_path):
    """TRL's generation step samples 2 groups from a policy moved away from its reference, scores them with 2 weighted
    rewards and takes beta times each completion's summed KL off its reward; our advantages of the same rewards and
    log-probs equal the ones it hands the loss."""
    from accelerate import Accelerator

    from rlhf_toy.generation.rollout import completion_logprobs
    rewards = RecordedRewards()
    cfg = RLOOConfig(prompts_per_step=B // G, num_generations=G, max_completion_length=10, beta=0.5, **case)
    trainer = trl_rloo_trainer(nano_dir, cfg, tmp_path, rewards.functions, weights=[0.7, 0.3])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.03 * torch.randn_like(p))
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([{"prompt": "Describe a fox and the lake."}] * B)
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    mask = out["completion_mask"].float()
    with torch.no_grad():
        old, _ = completion_logprobs(trainer.model.eval(), input_ids, attention_mask, mask)
        ref, _ = completion_logprobs(load_model(nano_dir).eval(), input_ids, attention_mask, mask)
    totals = (rewards.per_function * torch.tensor([0.7, 0.3])).sum(1)
    assert (old - ref).abs().max() > 1e-2 and len(set(totals.tolist())) > 2
    ours = rloo_advantages(Accelerator(cpu=True), totals, ((old - ref) * mask).sum(1), cfg)
    torch.testing.assert_close(ours, out["advantages"], atol=1e-5, rtol=0)


def test_trl_scores_left_padded_rows_at_shifted_positions(nano_dir):
    """The one difference kept on purpose: on a left-padded row, the project's log-probs are those the sampler drew with
    (generate's position ids skip the padding); a forward without position ids, as TRL's, starts them at the padding."""
    policy, tokenizer = load_model(nano_dir), load_tokenizer(nano_dir)
    torch.manual_seed(0)
    rollout = sample_rollout(policy, tokenizer, ["Describe a fox.", "Tell me about Ada and the lake near the old mill."],
                             SamplingConfig(max_new_tokens=8))
    padded = ~rollout.attention_mask[:, 0].bool()
    assert padded.any()
    prompt, mask = rollout.prompt_length, rollout.completion_mask
    with torch.no_grad():
        ours, _ = completion_logprobs(policy, rollout.input_ids, rollout.attention_mask, mask)
        logits = policy(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits[:, prompt - 1: -1]
    without_positions = logits.log_softmax(-1).gather(-1, rollout.completion_ids[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(ours, rollout.sampling_logprobs, atol=1e-5, rtol=0)
    assert (without_positions - rollout.sampling_logprobs)[padded].abs().max() > 1e-2
    torch.testing.assert_close(without_positions[~padded], ours[~padded], atol=1e-5, rtol=0)


PAIRS = Labels("pairwise", ["Describe a fox."] * 4,
               ["A fox is a small red animal.", "Foxes live in the woods.", "It is quick.", "A fox runs at night."],
               ["No.", "The lake is cold and the fox is far away from it.", "Red.", "I do not know what a fox is."],
               torch.ones(4))


@pytest.fixture(scope="module")
def policy_and_reference(nano_dir):
    """A policy moved away from its reference, so the log-ratios (and the DPO losses) are not at their starting point."""
    reference = load_model(nano_dir).eval()
    policy = copy.deepcopy(reference).train()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.03 * torch.randn_like(p))
    return policy, reference


def trl_dpo_batch(tokenizer, model, pairs: Labels) -> dict:
    """Our encoding of the pairs ([chosen; rejected], the completion after the prompt and eos) as TRL's inputs."""
    from rlhf_toy.generation.rollout import encode_completions
    input_ids, attention_mask, completion_mask = encode_completions(tokenizer, pairs.prompts * 2, pairs.first + pairs.second, model)
    prompt = input_ids.shape[1] - completion_mask.shape[1]
    assert attention_mask[:, :prompt].all()  # no left padding
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "completion_mask": torch.cat([torch.zeros(len(input_ids), prompt, dtype=torch.long), completion_mask.long()], dim=1)}


@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.0), ("robust", 0.2), ("ipo", 0.0)])
def test_dpo_loss_equals_trls(loss_type, label_smoothing, policy_and_reference, nano_dir, tmp_path):
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer
    assert loss_type in DPO_LOSS_TYPES
    policy, reference = policy_and_reference
    tokenizer = load_tokenizer(nano_dir)
    cfg = DPOConfig(beta=0.3, loss_type=loss_type, label_smoothing=label_smoothing)
    theirs_model = copy.deepcopy(policy)
    args = TRLDPOConfig(output_dir=str(tmp_path), beta=cfg.beta, loss_type=[loss_type], label_smoothing=label_smoothing, use_cpu=True, bf16=False,
                        report_to="none", save_strategy="no", disable_tqdm=True, per_device_train_batch_size=4)
    rows = {"prompt": PAIRS.prompts, "chosen": PAIRS.first, "rejected": PAIRS.second}
    trainer = DPOTrainer(model=theirs_model, ref_model=copy.deepcopy(reference), args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_dict(rows))
    ours_model = copy.deepcopy(policy)
    ours, _, _ = dpo_batch_loss(ours_model, reference, tokenizer, PAIRS, cfg)
    theirs = trainer.compute_loss(trainer.model, trl_dpo_batch(tokenizer, ours_model, PAIRS))
    assert_same(ours, theirs, ours_model, trainer.model)


@pytest.mark.parametrize("with_sampler_weights", [False, True])
def test_vespo_weights_equal_trls(with_sampler_weights):
    """Our gamma_weights against TRL's get_gamma_weights on the same log-ratios, advantages and sampler ratios."""
    from trl import GRPOTrainer
    torch.manual_seed(0)
    log_ratio, mask = 0.4 * torch.randn(6, 9), (torch.rand(6, 9) > 0.2).float()
    advantages = torch.tensor([[1.0], [-0.5], [0.0], [2.0], [-1.5], [0.3]])
    sampler = torch.exp(0.2 * torch.randn(6, 9)) if with_sampler_weights else None
    cfg = GRPOConfig(loss_type="vespo", vespo_k_pos=1.5, vespo_lambda_pos=2.5, vespo_k_neg=3.5, vespo_lambda_neg=1.5)
    theirs = GRPOTrainer.get_gamma_weights(advantages, log_ratio, mask, sampler, k_pos=1.5, lambda_pos=2.5, k_neg=3.5, lambda_neg=1.5)
    torch.testing.assert_close(gamma_weights(log_ratio, advantages, mask, cfg, sampler), theirs, atol=1e-6, rtol=1e-6)
    assert theirs.min() < 0.5 < theirs.max()  # weights away from 1 on both sides


def test_reward_model_loss_equals_trls(nano_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from rlhf_toy.rewards.learned_reward import sequence_texts
    tokenizer = load_tokenizer(nano_dir)
    model = AutoModelForSequenceClassification.from_pretrained(nano_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    torch.nn.init.normal_(model.score.weight, std=0.5)
    theirs_model = copy.deepcopy(model)
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
                        center_rewards_coefficient=None)
    rows = {"chosen": PAIRS.first, "rejected": PAIRS.second}
    trainer = RewardTrainer(model=theirs_model, args=args, processing_class=tokenizer, train_dataset=datasets.Dataset.from_dict(rows))
    ours, _ = labels_loss(model, tokenizer, dataclasses.replace(PAIRS))
    # the same texts in the batch TRL's collator builds: padded on the right (ours pads on the left, with positions counted
    # from each text's first token: the same scores)
    ids = tokenizer(sequence_texts(tokenizer, PAIRS.prompts * 2, PAIRS.first + PAIRS.second), add_special_tokens=False)["input_ids"]
    batch = trainer.data_collator([{"chosen_ids": c, "rejected_ids": r} for c, r in zip(ids[:len(PAIRS)], ids[len(PAIRS):], strict=True)])
    theirs = trainer.compute_loss(trainer.model, batch)
    assert_same(ours, theirs, model, trainer.model)


def test_the_moving_reference_equals_trls_sync_callback(policy_and_reference):
    """TR-DPO on the nano model: 4 optimizer steps with sync every 2 at alpha 0.6, ours by the optimizer's hook and
    TRL's SyncRefModelCallback at each step's end; the references agree bit for bit."""
    from accelerate import Accelerator
    from transformers import TrainerControl, TrainerState
    from trl.trainer.callbacks import SyncRefModelCallback

    from rlhf_toy.reference_sync import ReferenceSync

    policy, reference = policy_and_reference
    models = {side: (copy.deepcopy(policy), copy.deepcopy(reference)) for side in ("ours", "trl")}
    optimizers = {side: torch.optim.SGD(models[side][0].parameters(), lr=0.01) for side in models}
    ReferenceSync(*models["ours"], alpha=0.6, every=2).attach(optimizers["ours"])
    callback, args = SyncRefModelCallback(models["trl"][1], accelerator=None), trl.GRPOConfig(
        output_dir="unused", sync_ref_model=True, ref_model_mixup_alpha=0.6, ref_model_sync_steps=2, use_cpu=True, bf16=False,
        report_to="none")
    Accelerator(cpu=True)  # TRL's callback asks the accelerator state about DeepSpeed (after the config, which resets it)
    state, generator = TrainerState(), torch.Generator().manual_seed(0)
    for step in range(1, 5):
        gradients = [torch.randn(p.shape, generator=generator) for p in policy.parameters()]
        for side, (model, _) in models.items():
            for p, g in zip(model.parameters(), gradients, strict=True):
                p.grad = g.clone()
            optimizers[side].step()
        state.global_step = step
        callback.on_step_end(args, state, TrainerControl(), model=models["trl"][0])
    ours, theirs = models["ours"][1].state_dict(), models["trl"][1].state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not torch.equal(ours["transformer.h.0.mlp.c_fc.weight"], reference.state_dict()["transformer.h.0.mlp.c_fc.weight"])
