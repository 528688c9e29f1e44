"""One module per algorithm family; each exposes a config dataclass and `train(cfg, logger, evaluator)`."""

from classic_rl.algos import dqn, ppo, reinforce, tabular

ALGOS = {
    "ppo": (ppo.PPOConfig, ppo.train),
    "dqn": (dqn.DQNConfig, dqn.train),
    "reinforce": (reinforce.ReinforceConfig, reinforce.train),
    "q_learning": (tabular.TabularConfig, tabular.train_q_learning),
    "sarsa": (tabular.TabularConfig, tabular.train_sarsa),
    "value_iteration": (tabular.TabularConfig, tabular.train_value_iteration),
    "policy_iteration": (tabular.TabularConfig, tabular.train_policy_iteration),
}
