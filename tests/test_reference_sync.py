"""TR-DPO's moving reference (rlhf_toy/reference_sync.py): the mixing by hand, its period in optimizer steps, and what a
run does with it (the KL to a reference that jumps to the policy every step is 0; a resumed run moves the reference as an
uninterrupted one; DPO's checkpoints hold the reference)."""

import torch
from safetensors.torch import load_file

from rlhf_toy.algorithms.dpo import DPOConfig, train_dpo
from rlhf_toy.online import train
from rlhf_toy.reference_sync import ReferenceSync
from tests.conftest import comparable_metrics, step_rows
from tests.test_rlhf import small_config


def linear(weight: list[float], bias: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.fill_(bias)
    return layer


def test_every_second_optimizer_step_the_reference_moves_alpha_of_the_way_to_the_policy():
    policy, reference = linear([0.5, -1.0], 0.25), linear([1.0, 2.0], 0.0).requires_grad_(False)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    ReferenceSync(policy, reference, alpha=0.5, every=2).attach(optimizer)
    expected = {  # each step moves the policy by -(0.5, 0.5) and -0.25
        1: ([1.0, 2.0], 0.0),  # no sync yet
        2: ([0.25, 0.0], -0.125),  # 0.5 * policy (-0.5, -2; -0.25) + 0.5 * reference (1, 2; 0)
        3: ([0.25, 0.0], -0.125),
        4: ([-0.625, -1.5], -0.4375),  # 0.5 * (-1.5, -3; -0.75) + 0.5 * (0.25, 0; -0.125)
    }
    for step in range(1, 5):
        policy.weight.grad, policy.bias.grad = torch.full((1, 2), 0.5), torch.full((1,), 0.25)
        optimizer.step()
        weight, bias = expected[step]
        assert reference.weight.tolist() == [weight] and reference.bias.tolist() == [bias], step


def test_a_reference_that_jumps_to_the_policy_every_step_is_kl_0_from_it(nano, tmp_path):
    """One gradient step a training step, alpha 1: each step's reference is the policy that sampled it, so the k3 KL
    (taken before the step's gradient step) is 0 at every step; a fixed reference is not after the first."""
    common = dict(beta=0.04, steps=3, num_minibatches=1, log_completions_every=0)
    train(small_config(nano, tmp_path / "fixed", **common))
    train(small_config(nano, tmp_path / "synced", sync_ref_model=True, ref_model_mixup_alpha=1.0, ref_model_sync_steps=1, **common))
    fixed, synced = (step_rows(tmp_path / name / "run") for name in ("fixed", "synced"))
    assert [row["kl"] for row in synced] == [0.0, 0.0, 0.0]
    assert fixed[0]["kl"] == 0.0 and min(row["kl"] for row in fixed[1:]) > 1e-4


def test_a_resumed_run_moves_the_reference_as_an_uninterrupted_one(nano, tmp_path):
    """The checkpoint holds the reference's weights and the optimizer steps counted (2 of the period of 3 at step 2)."""
    sync = dict(beta=0.04, sync_ref_model=True, ref_model_mixup_alpha=0.5, ref_model_sync_steps=3, num_minibatches=2,
                prompts_per_step=2, num_generations=2)
    straight = train(small_config(nano, tmp_path / "straight", steps=4, **sync))
    train(small_config(nano, tmp_path, steps=1, save_every=1, **sync))
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-1" / "state.pt", weights_only=True)
    assert saved["reference_sync"] == {"optimizer_steps": 2}
    resumed = train(small_config(nano, tmp_path, steps=4, save_every=1, resume=True, **sync))
    assert comparable_metrics(tmp_path / "run") == comparable_metrics(tmp_path / "straight" / "run")
    assert resumed["kl_final"] == straight["kl_final"]


def test_dpo_checkpoints_hold_the_moved_reference(nano, tmp_path):
    root = nano[0]
    cfg = DPOConfig(model=str(root / "run" / "model"), preferences=str(root / "data" / "preferences_train.jsonl"),
                    eval_preferences=str(root / "data" / "preferences_eval.jsonl"), eval_prompts=str(root / "data" / "prompts_eval.jsonl"),
                    steps=2, per_device_train_batch_size=4, eval_every=2, eval_samples_per_prompt=1, max_completion_length=8,
                    learning_rate=1e-3, save_every=2, sync_ref_model=True, ref_model_mixup_alpha=1.0, ref_model_sync_steps=2,
                    run_dir=str(tmp_path / "run"))
    train_dpo(cfg)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-2" / "state.pt", weights_only=True)
    policy = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert saved["reference_sync"] == {"optimizer_steps": 2}
    for name, weight in policy.items():  # alpha 1 at step 2: the reference is the policy of step 2, the one saved
        assert torch.equal(saved["reference"][name], weight), name
