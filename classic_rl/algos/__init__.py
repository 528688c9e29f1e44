"""One module per algorithm family; each exposes a config dataclass and `train(cfg, logger, evaluator)`.

Listed in the order a course would teach them, from search to PPO, then off-policy continuous control."""

from classic_rl.algos import a2c, a3c, dqn, ppo, reinforce, sac, search, tabular, td3, trpo, vpg

ALGOS = {
    "random_search": (search.SearchConfig, search.train_random_search),
    "hill_climbing": (search.SearchConfig, search.train_hill_climbing),
    "value_iteration": (tabular.TabularConfig, tabular.train_value_iteration),
    "policy_iteration": (tabular.TabularConfig, tabular.train_policy_iteration),
    "q_learning": (tabular.TabularConfig, tabular.train_q_learning),
    "sarsa": (tabular.TabularConfig, tabular.train_sarsa),
    "reinforce": (reinforce.ReinforceConfig, reinforce.train),
    "vpg": (vpg.VPGConfig, vpg.train),
    "a2c": (a2c.A2CConfig, a2c.train),
    "a3c": (a3c.A3CConfig, a3c.train),
    "dqn": (dqn.DQNConfig, dqn.train),
    "trpo": (trpo.TRPOConfig, trpo.train),
    "ppo": (ppo.PPOConfig, ppo.train),
    "ddpg": (td3.DDPGConfig, td3.train),
    "td3": (td3.TD3Config, td3.train),
    "sac": (sac.SACConfig, sac.train),
}
