"""Learning-signal probe: how many sampled groups give SCoRe a gradient, per temperature.

RLOO (`score_ray.algo.rloo_advantages`) gives zero advantage to every sample of a group whose
rewards are all equal, and SCoRe only learns to correct if some sampled second attempts fix
a wrong first attempt (i->c). This script samples the rollout policy on TRAINING problems
(never the held-out split), scores both attempts with the verifier's scorer and counts, per
temperature: Acc@t1 and Acc@t2 of the samples, the attempt transitions (00, 01 = i->c,
10 = c->i, 11), and the groups whose Stage I reward (r2) or Stage II shaped reward
(`stage2_rewards`, alpha from the config) varies, i.e. the groups that carry a signal.

    .venv/bin/python benchmarks/signal_probe.py --temperatures 0.3 0.6 1.0
    # first attempts at T=1.0, four second attempts of each at T=0.3:
    .venv/bin/python benchmarks/signal_probe.py --temperatures 1.0 --revisions 4 \
        rollout.attempt2_temperature=0.3
    # a trained policy (its final/ folder), on the same training problems:
    .venv/bin/python benchmarks/signal_probe.py --temperatures 0.3 --label demo-trained \
        model.path=runs/demo/train/final

Writes benchmarks/results/signal_probe-<label or model>.json.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from bench_common import ROOT, init_ray, table, write_result

from score_ray.algo.rewards import stage2_rewards
from score_ray.config import load_config
from score_ray.launch import prepare_inputs
from score_ray.rollout.group import RolloutGroup
from score_ray.verify.scorers import score_completion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", action="append", help="YAML config, repeatable (default conf/demo.yaml)"
    )
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8, help="first attempts per problem")
    parser.add_argument(
        "--revisions", type=int, default=1, help="second attempts per first attempt (M)"
    )
    parser.add_argument("--offset", type=int, default=100, help="first training problem used")
    parser.add_argument("--label", help="results file name (default: model.path)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    args.config = args.config or [str(ROOT / "conf" / "demo.yaml")]

    cfg = load_config(args.config, args.overrides)
    model_path, train, _ = prepare_inputs(cfg)
    problems = train[args.offset : args.offset + args.problems]
    init_ray(num_cpus=2)
    runs = {}
    for temperature in args.temperatures:
        cfg = load_config(args.config, [*args.overrides, f"rollout.temperature={temperature}"])
        group = RolloutGroup(cfg, model_path)
        traces = group.generate(problems, args.samples, False, 7, args.revisions)
        group.shutdown()
        runs[str(temperature)] = probe(cfg, problems, traces, args.samples * args.revisions)
        runs[str(temperature)]["wrong_first_attempts_fixed"] = _fixed_first_attempts(
            cfg, problems, traces, args.samples, args.revisions
        )
        print(f"temperature {temperature}: {runs[str(temperature)]}", flush=True)

    data = {
        "config": args.config,
        "overrides": args.overrides,
        "problems": args.problems,
        "samples": args.samples,
        "revisions": args.revisions,
        "runs": runs,
    }
    write_result("signal_probe", args.label or cfg.model.path, data)
    header = [
        "T",
        "Acc@t1",
        "Acc@t2",
        "i->c",
        "c->i",
        "wrong y1 fixed",
        "groups with r2 signal",
        "Stage II signal",
    ]
    rows = [
        [
            temperature,
            run["acc_t1"],
            run["acc_t2"],
            run["transitions"].get("01", 0),
            run["transitions"].get("10", 0),
            "{1}/{0}".format(*run["wrong_first_attempts_fixed"]),
            f"{run['groups_r2_varies']}/{args.problems}",
            f"{run['groups_shaped_varies']}/{args.problems}",
        ]
        for temperature, run in runs.items()
    ]
    print(table(header, rows))


def probe(cfg, problems, traces, samples: int) -> dict:
    """Rewards, transitions and signal-carrying groups of S samples per problem."""

    def rewards(attempt: str) -> torch.Tensor:  # [problems * samples]
        return torch.tensor(
            [
                score_completion(problems[i // samples], getattr(t, attempt), answer_format)
                for i, t in enumerate(traces)
            ]
        )

    answer_format = cfg.prompts.answer_format
    r1, r2 = rewards("attempt1_text"), rewards("attempt2_text")
    shaped = stage2_rewards(r1, r2, cfg.algo.alpha)[1]
    return {
        "acc_t1": r1.mean().item(),
        "acc_t2": r2.mean().item(),
        "transitions": dict(Counter(f"{int(a)}{int(b)}" for a, b in zip(r1, r2, strict=True))),
        "groups_r2_varies": _groups_that_vary(r2, samples),
        "groups_shaped_varies": _groups_that_vary(shaped, samples),
        "examples": [[t.attempt1_text, t.attempt2_text] for t in traces[:4]],
    }


def _fixed_first_attempts(cfg, problems, traces, samples: int, revisions: int) -> list[int]:
    """[wrong first attempts, of which at least one of the M revisions fixed]."""
    fmt = cfg.prompts.answer_format
    per_problem = samples * revisions
    wrong = fixed = 0
    for start in range(0, len(traces), revisions):
        problem = problems[start // per_problem]
        if score_completion(problem, traces[start].attempt1_text, fmt) >= 1.0:
            continue
        wrong += 1
        siblings = traces[start : start + revisions]
        fixed += any(score_completion(problem, t.attempt2_text, fmt) >= 1.0 for t in siblings)
    return [wrong, fixed]


def _groups_that_vary(rewards: torch.Tensor, samples: int) -> int:
    grouped = rewards.view(-1, samples)  # [problems, samples]
    return int((grouped.max(dim=1).values != grouped.min(dim=1).values).sum())


if __name__ == "__main__":
    main()
