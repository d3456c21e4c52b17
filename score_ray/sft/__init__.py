"""Supervised fine-tuning baselines on Ray Train: STaR, Pair-SFT (the paper's comparisons to
SCoRe) and gold-answer SFT (a base that can do the task). See docs/sft.md.

    examples.py   pure: which samples become training examples, and their loss masks
    data.py       the examples of a round, sampled and scored by the RL actors
    train.py      the per-worker DDP loop and the Ray Train TorchTrainer around it
    run.py        the driver: rounds, their reports, final/
"""
