"""The driver: SCoRe Stage I then Stage II, one step at a time.

Each step reads top to bottom:

    generate -> verify -> rewards and advantages -> learn -> sync weights -> log

Heavy work happens in actors (RolloutGroup, VerifierPool, LearnerGroup); the
driver moves traces, rewards and weight handles between them and does the
cheap math of `score_ray.algo` itself.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from score_ray.algo import attempt_rewards, collate_traces, rloo_advantages
from score_ray.algo.traces import Trace
from score_ray.config import Config, save_config
from score_ray.evaluate import self_correction_metrics
from score_ray.learner.group import LearnerGroup
from score_ray.metrics import MetricsLogger
from score_ray.prompts import PromptBuilder
from score_ray.rollout.group import RolloutGroup
from score_ray.tasks.base import Problem
from score_ray.verify.pool import VerifierPool, VerifyStats

log = logging.getLogger(__name__)


@dataclass
class Actors:
    rollout: RolloutGroup
    verifiers: VerifierPool
    learner: LearnerGroup

    def shutdown(self) -> None:
        self.rollout.shutdown()
        self.verifiers.shutdown()
        self.learner.shutdown()


class ProblemSampler:
    """Endless shuffled passes over the training problems (seeded)."""

    def __init__(self, problems: list[Problem], seed: int) -> None:
        self.problems = problems
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next_batch(self, size: int) -> list[Problem]:
        batch = []
        while len(batch) < size:
            if not self.order:
                self.order = list(range(len(self.problems)))
                self.rng.shuffle(self.order)
            batch.append(self.problems[self.order.pop()])
        return batch


class Trainer:
    def __init__(self, cfg: Config, model_path: str, train: list[Problem], held_out: list[Problem]):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.held_out = held_out
        self.sampler = ProblemSampler(train, cfg.train.seed)
        self.problems = {p.uid: p for p in [*train, *held_out]}
        self.model_path = model_path
        self.version = 0
        self.global_step = 0
        self.metrics = MetricsLogger(self.output_dir)
        self.actors = Actors(
            rollout=RolloutGroup(cfg, model_path),
            verifiers=VerifierPool(cfg.verifier, cfg.prompts.answer_format),
            learner=LearnerGroup(cfg, model_path),
        )
        self.pad_id = _pad_id(model_path)

    def run(self) -> dict[str, float]:
        cfg = self.cfg
        save_config(cfg, self.output_dir / "config.yaml")
        schedule = [1] * cfg.train.stage1_steps + [2] * cfg.train.stage2_steps
        self.evaluate(tag="base")
        with tqdm(total=len(schedule), desc="SCoRe", unit="step", dynamic_ncols=True) as bar:
            for stage in schedule:
                record = self.step(stage)
                bar.set_postfix(
                    stage=stage,
                    r1=f"{record['reward/attempt1']:.2f}",
                    r2=f"{record['reward/attempt2']:.2f}",
                    loss=f"{record['loss']:.3f}",
                )
                bar.update()
                if cfg.train.eval_every and self.global_step % cfg.train.eval_every == 0:
                    self.evaluate(tag="periodic")
        final = self.evaluate(tag="final")
        self.actors.learner.save_pretrained(str(self.output_dir / "final"))
        self.metrics.close()
        return final

    def step(self, stage: int) -> dict:
        """One SCoRe update."""
        cfg = self.cfg
        self.global_step += 1
        seed = cfg.train.seed * 1_000_003 + self.global_step
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # generate: S two-attempt traces per prompt
        problems = self.sampler.next_batch(cfg.train.prompts_per_step)
        with _timed(timings, "time/generate"):
            traces = self.actors.rollout.generate(
                problems, cfg.train.samples_per_prompt, greedy=False, seed=seed
            )

        # verify: binary reward per attempt
        with _timed(timings, "time/verify"):
            r1, r2, verify_stats = self.verify(traces)

        # rewards and advantages (Stage I / II rewards, RLOO per prompt)
        reward1, reward2 = attempt_rewards(
            stage, r1, r2, cfg.algo.alpha, cfg.algo.stage1_train_attempt1
        )
        groups = (cfg.train.prompts_per_step, cfg.train.samples_per_prompt)
        advantage1 = rloo_advantages(reward1.view(groups)).flatten()
        advantage2 = rloo_advantages(reward2.view(groups)).flatten()

        # learn: one policy-gradient step on the learner group
        with _timed(timings, "time/learn"):
            batch = collate_traces(traces, self.pad_id)
            learn_stats = self.actors.learner.train_step(batch, advantage1, advantage2, stage)

        # sync weights: learner -> every rollout worker
        with _timed(timings, "time/sync"):
            self.version += 1
            handle = self.actors.learner.send_weights(self.version)
            self.actors.rollout.update_weights(handle)

        # log
        timings["time/step"] = time.perf_counter() - started
        record = {
            "stage": stage,
            "step": self.global_step,
            "weight_version": self.version,
            "rollout_weight_version": min(t.weight_version for t in traces),
            "reward/attempt1": reward1.mean().item(),
            "reward/attempt2": reward2.mean().item(),
            "acc/t1": r1.mean().item(),
            "acc/t2": r2.mean().item(),
            "tokens/generated": sum(t.num_generated for t in traces),
            "sync/bytes": handle.num_bytes,
            **learn_stats,
            **verify_stats.as_metrics(),
            **timings,
        }
        self.metrics.log(record, self.global_step)
        return record

    def verify(self, traces: list[Trace]) -> tuple[torch.Tensor, torch.Tensor, VerifyStats]:
        """Score both attempts of every trace; returns r1 [N], r2 [N]."""
        items = []
        for trace in traces:
            problem = self.problems[trace.problem_uid]
            items += [(problem, trace.attempt1_text), (problem, trace.attempt2_text)]
        rewards, stats = self.actors.verifiers.score(items)
        pairs = torch.tensor(rewards, dtype=torch.float32).view(-1, 2)
        return pairs[:, 0].contiguous(), pairs[:, 1].contiguous(), stats

    def evaluate(self, tag: str) -> dict[str, float]:
        """Greedy two-attempt evaluation on the held-out split."""
        cap = self.cfg.train.eval_max_problems
        problems = self.held_out[:cap] if cap and tag == "periodic" else self.held_out
        started = time.perf_counter()
        traces = self.actors.rollout.generate(problems, 1, greedy=True, seed=0)
        r1, r2, _ = self.verify(traces)
        result = self_correction_metrics(r1.tolist(), r2.tolist())
        record = {
            "eval": tag,
            "step": self.global_step,
            "weight_version": self.version,
            "eval/problems": len(problems),
            "time/eval": time.perf_counter() - started,
            **{f"eval/{key}": value for key, value in result.items()},
        }
        self.metrics.log(record, self.global_step)
        tqdm.write(
            f"[eval {tag} @ step {self.global_step}] Acc@t1 {result['acc_t1']:.3f}  "
            f"Acc@t2 {result['acc_t2']:.3f}  Delta {result['delta']:+.3f}  "
            f"i->c {result['delta_i2c']:.3f}  c->i {result['delta_c2i']:.3f}"
        )
        return result


class _timed:
    def __init__(self, into: dict[str, float], key: str) -> None:
        self.into, self.key = into, key

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.into[self.key] = time.perf_counter() - self.start


def _pad_id(model_path: str) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad)


def filter_prompt_lengths(
    problems: list[Problem], builder: PromptBuilder, cfg: Config
) -> tuple[list[Problem], int]:
    """Drop problems whose two attempts cannot fit in model.max_model_len."""
    budget = cfg.model.max_model_len - 2 * cfg.rollout.max_new_tokens - builder.max_bridge_len()
    kept = [p for p in problems if len(builder.first_prompt_ids(p.question)) <= budget]
    return kept, len(problems) - len(kept)
