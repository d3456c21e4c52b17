"""The driver: SCoRe Stage I then Stage II, one step at a time.

Each step reads top to bottom:

    generate -> verify -> rewards and advantages -> learn -> sync weights -> log

Generation and verification overlap (`rollout.stream_verify`): each finished
trace goes to the verifier pool while the engines are still generating, so the
step times both in one phase; `time/verify` is what verification adds after
the last trace arrived.

With `train.max_staleness` = 1 the rollout runs one step ahead: step k+1's batch is generated
and verified while the learner updates on step k, and the loop waits for it before the sync.
`score_ray.pipeline.RolloutPipeline` holds that overlap, so the step still reads in the order
above (docs/throughput.md).

Heavy work happens in actors (RolloutGroup, VerifierPool, LearnerGroup); the
driver moves traces, rewards and weight handles between them and does the
cheap math of `score_ray.algo` itself.

Fault tolerance: a checkpoint is written every `train.checkpoint_every` steps
and when SIGTERM/SIGINT arrives (at the end of the step in flight). A dead
rollout worker or verifier is replaced inside its group; a dead learner rank
rolls the whole run back to the newest checkpoint (to the base model before the first
one). So does a broken GPU weight transport (`WeightSyncError`: a sync past
`sync.timeout_s`, a dead rollout worker that cannot rejoin the group). `Trainer(...,
resume=True)` continues a run from its newest checkpoint, across the Stage I -> II boundary.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from score_ray.algo import TraceBatch, attempt_rewards, collate_traces
from score_ray.algo.advantages import trace_advantages
from score_ray.algo.traces import Attempt, Trace
from score_ray.checkpoint import (
    FINAL,
    FINAL_ADAPTER,
    STAGE1_POLICY,
    checkpoint_location,
    latest_checkpoint,
    learner_dir,
    read_driver_state,
    write_checkpoint,
    write_final,
)
from score_ray.config import Config, save_config
from score_ray.evaluate import self_correction_metrics
from score_ray.gpu_release import wait_for_gpu_release
from score_ray.learner.group import LearnerFailure, LearnerGroup
from score_ray.metrics import MetricsLogger
from score_ray.models import load_tokenizer
from score_ray.offline import POOL_FILE, OfflinePool, offline_prompts_per_step, pool_problems
from score_ray.pipeline import Rollout, RolloutPipeline, stale_traces
from score_ray.placement import Placement, reserve
from score_ray.prompts import PromptBuilder
from score_ray.reachable import (
    FILTER_FILE,
    load_counts,
    reachable_problems,
    save_counts,
    solved_counts,
)
from score_ray.rollout.group import RolloutGroup
from score_ray.rollout.sleep import KV_CACHE, WEIGHTS
from score_ray.sync import (
    WeightSyncError,
    choose_transport,
    connect_weight_transport,
    sync_weights,
)
from score_ray.tasks.base import Problem
from score_ray.transitions import answer_change_metrics, transition_counts
from score_ray.transport import WeightHandle
from score_ray.verify.pool import VerifierPool, VerifyStats
from score_ray.verify.scorers import extract_answer

log = logging.getLogger(__name__)


@dataclass
class Actors:
    rollout: RolloutGroup
    verifiers: VerifierPool
    learner: LearnerGroup

    placement: Placement

    def shutdown(self) -> None:
        self.rollout.shutdown()
        self.verifiers.shutdown()
        self.learner.shutdown()
        self.placement.remove()


class Interrupted(SystemExit):
    """SIGTERM/SIGINT: a checkpoint was written, the run can be resumed."""


class ProblemSampler:
    """Endless shuffled passes over the training problems (seeded, checkpointable)."""

    def __init__(self, problems: list[Problem], seed: int) -> None:
        self.problems = problems
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "order": list(self.order)}

    def load_state(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = list(state["order"])

    def next_batch(self, size: int) -> list[Problem]:
        batch = []
        while len(batch) < size:
            if not self.order:
                self.order = list(range(len(self.problems)))
                self.rng.shuffle(self.order)
            batch.append(self.problems[self.order.pop()])
        return batch


class Trainer:
    def __init__(
        self,
        cfg: Config,
        model_path: str,
        train: list[Problem],
        held_out: list[Problem],
        resume: bool = False,
        dev: list[Problem] | None = None,
    ):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.checkpoints = checkpoint_location(cfg)
        # In-training evaluations watch the dev split when there is one: the held-out split
        # is kept for the numbers a run reports (`score-ray eval`).
        self.eval_problems = dev or held_out
        self.eval_split = "dev" if dev else "held_out"
        self.train_problems = train
        self.sampler = ProblemSampler(train, cfg.train.seed)
        self.offline: OfflinePool | None = None
        self.problems = {p.uid: p for p in [*train, *held_out, *(dev or [])]}
        self.model_path = model_path
        self.schedule = [1] * cfg.train.stage1_steps + [2] * cfg.train.stage2_steps
        self.version = 0
        self.global_step = 0
        self.learner_restarts = 0
        self.stop_signal: int | None = None
        self.train_seconds = 0.0  # wall time of the steps so far, for train.time_budget_s
        # Fails in seconds, naming what is missing, if the cluster cannot hold the layout.
        placement = reserve(cfg, cfg.placement_timeout_s)
        self.actors = Actors(
            rollout=RolloutGroup(cfg, model_path, placement),
            verifiers=VerifierPool(cfg.verifier, cfg.prompts.answer_format, placement),
            learner=LearnerGroup(cfg, model_path, placement),
            placement=placement,
        )
        connect_weight_transport(self.actors.learner, self.actors.rollout)
        self.rollouts = RolloutPipeline(self.launch_rollout, cfg.train.max_staleness)
        # Padding is masked by attention_mask; the id only fills the tensor.
        self.pad_id = int(load_tokenizer(model_path).pad_token_id)
        self.offline = self._load_offline_pool() if resume else None
        self.reachable_filtered = resume and self._load_reachable_filter()
        self.initial_state = self.driver_state()  # what a failure before any checkpoint restores
        checkpoint = latest_checkpoint(self.checkpoints) if resume else None
        if checkpoint is not None:
            self.restore(checkpoint)
        # A resumed run drops the records written after its checkpoint, or all of them
        # when the run died before its first checkpoint and starts over.
        resume_step = (self.global_step if checkpoint else -1) if resume else None
        self.metrics = MetricsLogger(self.output_dir, resume_step=resume_step, cfg=cfg)

    def run(self) -> dict[str, float]:
        cfg = self.cfg
        save_config(cfg, self.output_dir / "config.yaml")
        if self.global_step == 0:
            self.evaluate(tag="base")
        if not self.reachable_filtered and cfg.train.reachable_samples > 0:
            self._filter_reachable()
        if self.offline is None and cfg.train.offline_attempt1_fraction > 0:
            self.offline = self._sample_offline_pool()
            self.initial_state["offline_pool"] = self.offline.state()  # a restart redraws alike
        bar = tqdm(
            total=len(self.schedule),
            initial=self.global_step,
            desc="SCoRe",
            unit="step",
            dynamic_ncols=True,
        )
        with bar, self._checkpoint_on_signals():
            while self.global_step < len(self.schedule) and not self._out_of_time():
                stage = self.schedule[self.global_step]
                started = time.perf_counter()
                try:
                    record = self.step(stage)
                    bar.set_postfix(
                        stage=stage,
                        r1=f"{record['reward/attempt1']:.2f}",
                        r2=f"{record['reward/attempt2']:.2f}",
                        loss=f"{record['loss']:.3f}",
                    )
                    bar.update()
                    self._after_step()
                except (LearnerFailure, WeightSyncError) as failure:
                    self.recover_learner(failure)
                    bar.n = self.global_step
                    bar.refresh()
                finally:
                    self.train_seconds += time.perf_counter() - started
        return self._finish()

    def _out_of_time(self) -> bool:
        """train.time_budget_s is spent: the run ends here as if its schedule were done."""
        budget = self.cfg.train.time_budget_s
        if not budget or self.train_seconds < budget:
            return False
        tqdm.write(
            f"train.time_budget_s={budget:g} spent ({self.train_seconds:.0f} s of steps): "
            f"stopping after step {self.global_step} of {len(self.schedule)}"
        )
        return True

    def release_actors(self) -> None:
        """Kill every actor and free the placement for what this driver starts next (STaR in
        Stage II: new vLLM engines, Ray Train workers). On GPUs, the placement goes only once
        the rollout GPUs have room for a new engine (`wait_for_gpu_release`, as in
        `recover_learner`); on CPU that wait is a no-op."""
        actors = self.actors
        actors.rollout.shutdown()
        actors.verifiers.shutdown()
        actors.learner.shutdown()
        wait_for_gpu_release(self.cfg, actors.placement, self.cfg.placement_timeout_s)
        actors.placement.remove()

    def _finish(self) -> dict[str, float]:
        """The last evaluation, then the trained model to OUTPUT_DIR/final.

        With train.stage2_method=star the policy is only Stage I's: it is evaluated as
        "stage1" and written to OUTPUT_DIR/stage1, and `score_ray.star_stage2` trains final/
        from it (the final numbers then come from `score-ray eval`)."""
        self.rollouts.shutdown()  # nothing is in flight after the last step; stop the thread
        cfg = self.cfg
        rl = cfg.train.stage2_method == "rl"
        result = self.evaluate(tag="final" if rl else STAGE1_POLICY)
        if rl:
            self.metrics.log_final(result, self.global_step)
        folder = FINAL if rl else STAGE1_POLICY
        write_final(cfg, self.actors.learner.save_pretrained, folder)  # LoRA: merged into the base
        if cfg.learner.lora.rank > 0 and rl:
            write_final(cfg, self.actors.learner.save_adapter, FINAL_ADAPTER)
        self.metrics.close()
        return result

    def _after_step(self) -> None:
        """Periodic checkpoint, checkpoint-and-exit on a signal, periodic evaluation (the last
        step's is left to the final one)."""
        cfg = self.cfg
        every = cfg.train.checkpoint_every
        if self.stop_signal is not None:
            self.save_checkpoint()
            name = signal.Signals(self.stop_signal).name
            tqdm.write(
                f"{name}: checkpoint written at step {self.global_step}; continue with "
                f"`score-ray train --resume {self.output_dir}`"
            )
            raise Interrupted(128 + self.stop_signal)
        if every and self.global_step % every == 0 and self.global_step < len(self.schedule):
            self.save_checkpoint()
        # The last step's evaluation is the final one, which `run` does anyway.
        last = self.global_step >= len(self.schedule)
        if cfg.train.eval_every and self.global_step % cfg.train.eval_every == 0 and not last:
            self.evaluate(tag="periodic")

    @contextmanager
    def _checkpoint_on_signals(self):
        """SIGTERM/SIGINT ask for a checkpoint at the end of the step in flight; a
        second signal stops at once."""

        def handler(signum: int, _frame: Any) -> None:
            if self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = signum
            tqdm.write(f"{signal.Signals(signum).name}: finishing the step, then checkpointing")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def driver_state(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "stage": self.schedule[self.global_step - 1] if self.global_step else 0,
            "weight_version": self.version,
            "sampler": self.sampler.state(),
            "offline_pool": self.offline.state() if self.offline else None,
            "torch_rng": torch.get_rng_state().tolist(),
            "train_seconds": self.train_seconds,
            # One-step-off: the next step's batch, finished before the sync; resume replays it.
            "rollout_ahead": self.rollouts.state(self.version),
        }

    def save_checkpoint(self) -> str:
        return write_checkpoint(
            self.checkpoints,
            self.global_step,
            self.driver_state(),
            self.actors.learner.save_checkpoint,
            keep=self.cfg.train.keep_checkpoints,
        )

    def restore(self, checkpoint: str) -> None:
        """Load learner and driver state from `checkpoint` and push its weights."""
        state = read_driver_state(checkpoint)
        self.actors.learner.load_checkpoint(learner_dir(checkpoint))
        self._continue_from(state)
        log.info(
            "restored %s (step %d, weight version %d)", checkpoint, self.global_step, self.version
        )

    def _continue_from(self, state: dict[str, Any]) -> None:
        """Take up the driver state `state` and push the learner's weights to the rollout."""
        self.global_step = state["global_step"]
        self.train_seconds = state.get("train_seconds", 0.0)  # absent in older checkpoints
        self.sampler.load_state(state["sampler"])
        if self.offline is not None and state.get("offline_pool"):
            self.offline.load_state(state["offline_pool"])
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        # Rollout workers only accept newer versions; if they already ran weights
        # newer than the checkpoint (learner failure), continue above those.
        held = max(self.actors.rollout.weight_versions())
        self.version = state["weight_version"] if held < state["weight_version"] else held + 1
        self.rollouts.restore(state.get("rollout_ahead"), self.version)
        sync_weights(self.actors.learner, self.actors.rollout, self.version)

    def learn_and_sync(
        self,
        batch: TraceBatch,
        advantage1: torch.Tensor,  # [B]
        advantage2: torch.Tensor,  # [B]
        stage: int,
        weight1: torch.Tensor,  # [B]
        timings: dict[str, float],
    ) -> tuple[dict[str, float], WeightHandle]:
        """One policy-gradient step on the learner group, then the new weights to every rollout
        worker. Colocated, vLLM sleeps while the learner trains and wakes in two parts: its
        weights before the sync (which writes into them), its KV cache after it, once the
        learner has freed its exported copy and cached blocks (Learner.release_weights), so
        the GPU never holds KV cache, learner peak and sync copy at once."""
        colocated = self.cfg.rollout.colocate_with_learner
        with _timed(timings, "time/learn"):
            if colocated:
                self.actors.rollout.sleep()  # vLLM gives the shared GPUs to the learner
            learn_stats = self.actors.learner.train_step(
                batch, advantage1, advantage2, stage, weight1
            )
        # One-step-off: the next step's rollout must be done before the sync writes into the
        # engines that generate it (settle); synchronous, nothing is in flight.
        self.rollouts.settle(timings)
        with _timed(timings, "time/sync"):
            if colocated:
                self.actors.rollout.wake_up([WEIGHTS])
            self.version += 1
            handle = sync_weights(self.actors.learner, self.actors.rollout, self.version)
            if colocated:
                self.actors.rollout.wake_up([KV_CACHE])
        return learn_stats, handle

    def recover_learner(self, failure: LearnerFailure | WeightSyncError) -> None:
        """Rebuild the learner group and roll the run back to the newest checkpoint, or to
        the base model (step 0) when there is none yet."""
        log.warning("%s; rebuilding the learner group from the newest checkpoint", failure)
        self.learner_restarts += 1
        self.rollouts.discard()  # the run rolls back; the checkpoint has its own rollout ahead
        self.actors.learner.shutdown()
        if choose_transport(self.cfg) != "object_store":
            # The engines shared an NCCL group or GPU memory with the dead rank (and may be
            # stuck in a broadcast): start them afresh, before the learner, as at start-up.
            self.actors.rollout.shutdown()
            # The killed processes must have freed their GPU memory, else vLLM refuses to start.
            wait_for_gpu_release(self.cfg, self.actors.placement, self.cfg.placement_timeout_s)
            self.actors.rollout = RolloutGroup(self.cfg, self.model_path, self.actors.placement)
        elif self.cfg.rollout.colocate_with_learner:
            # It slept through the failed learn step; the KV cache wakes after the sync below.
            self.actors.rollout.wake_up([WEIGHTS])
        self.actors.learner = LearnerGroup(self.cfg, self.model_path, self.actors.placement)
        connect_weight_transport(self.actors.learner, self.actors.rollout)
        checkpoint = latest_checkpoint(self.checkpoints)
        if checkpoint is None:  # the new group holds the base model: start over
            log.warning("no checkpoint yet: restarting from the base model at step 0")
            self._continue_from(self.initial_state)
        else:
            self.restore(checkpoint)
        if self.cfg.rollout.colocate_with_learner:
            self.actors.rollout.wake_up()  # the rest (a no-op for restarted engines)
        self.metrics.close()
        self.metrics = MetricsLogger(self.output_dir, resume_step=self.global_step, cfg=self.cfg)

    def _load_offline_pool(self) -> OfflinePool | None:
        """The run's offline first-attempt pool if it was already sampled (resume)."""
        path = self.output_dir / POOL_FILE
        if self.cfg.train.offline_attempt1_fraction <= 0 or not path.is_file():
            return None
        train = {problem.uid: problem for problem in self.train_problems}
        return OfflinePool.load(path, train, self.cfg.train.seed)

    def _sample_offline_pool(self) -> OfflinePool:
        """Sample the pool from the current weights, which are the base model's (before step 1)."""
        cfg = self.cfg
        if self.version != 0:
            raise RuntimeError("the offline pool must be sampled from the base model (version 0)")
        problems = pool_problems(self.train_problems, cfg.train.offline_pool_size, cfg.train.seed)
        started = time.perf_counter()
        attempts = self.actors.rollout.sample_first_attempts(
            problems, cfg.train.samples_per_prompt, seed=cfg.train.seed * 1_000_003 - 1
        )
        pool = OfflinePool(problems, attempts, cfg.train.seed)
        pool.save(self.output_dir / POOL_FILE)
        tqdm.write(
            f"offline pool: {len(problems)} problems x {cfg.train.samples_per_prompt} base-model "
            f"first attempts in {time.perf_counter() - started:.0f} s -> {POOL_FILE}"
        )
        return pool

    def _train_on(self, solved: dict[str, int]) -> None:
        """Draw training prompts only from the flip-reachable problems of `solved`."""
        samples = self.cfg.train.reachable_samples
        kept = reachable_problems(self.train_problems, solved, samples)
        if not kept:
            raise ValueError(
                f"train.reachable_samples={samples}: none of the {len(solved)} probed training "
                f"problems was solved in some but not all of {samples} base-model first "
                "attempts; probe more problems (train.reachable_pool_size) or turn the filter "
                "off (train.reachable_samples=0)"
            )
        self.sampler = ProblemSampler(kept, self.cfg.train.seed)

    def _load_reachable_filter(self) -> bool:
        """Take up the run's flip-reachable problems if they were already probed (resume)."""
        path = self.output_dir / FILTER_FILE
        if self.cfg.train.reachable_samples <= 0 or not path.is_file():
            return False
        uids = {problem.uid for problem in self.train_problems}
        self._train_on(load_counts(path, uids, self.cfg.train.reachable_samples))
        return True

    def _filter_reachable(self) -> None:
        """Probe training problems with base-model first attempts (version 0, before step 1)
        and train only on those solved sometimes but not always (`score_ray.reachable`)."""
        cfg = self.cfg
        if self.version != 0:
            raise RuntimeError("flip-reachable filtering must probe the base model (version 0)")
        samples, size = cfg.train.reachable_samples, cfg.train.reachable_pool_size
        probed = pool_problems(
            self.train_problems, size or len(self.train_problems), cfg.train.seed
        )
        started = time.perf_counter()
        attempts = self.actors.rollout.sample_first_attempts(
            probed, samples, seed=cfg.train.seed * 1_000_003 - 2
        )
        items = [(p, a.text) for p, group in zip(probed, attempts, strict=True) for a in group]
        rewards, _ = self.actors.verifiers.score(items)
        solved = dict(zip([p.uid for p in probed], solved_counts(rewards, samples), strict=True))
        save_counts(self.output_dir / FILTER_FILE, solved, samples)
        self._train_on(solved)
        self.reachable_filtered = True
        kept = len(self.sampler.problems)
        never = sum(1 for count in solved.values() if count == 0)
        tqdm.write(
            f"flip-reachable filter: {kept} of {len(probed)} training problems solved in 1 to "
            f"{samples - 1} of {samples} base-model first attempts ({never} never, "
            f"{len(probed) - kept - never} always) in {time.perf_counter() - started:.0f} s "
            f"-> {FILTER_FILE}"
        )

    def next_problems(self) -> tuple[list[Problem], list[list[Attempt] | None]]:
        """This step's prompts and, per prompt, its given first attempts (offline pool) or None
        (sampled from the current policy). The offline prompts come last."""
        cfg = self.cfg
        total = cfg.train.prompts_per_step
        offline = offline_prompts_per_step(total, cfg.train.offline_attempt1_fraction)
        if self.offline is None:
            offline = 0
        problems = self.sampler.next_batch(total - offline)
        given: list[list[Attempt] | None] = [None] * len(problems)
        if offline:
            pool_batch, attempts = self.offline.next_batch(offline)
            problems += pool_batch
            given += attempts
        return problems, given

    def launch_rollout(self, step: int) -> Callable[[], Rollout]:
        """Draw step `step`'s problems now (the sampler advances in step order, in the driver
        thread) and return the job that generates and verifies them: S first attempts per
        prompt (sampled, or from the offline pool), M second attempts per first attempt, a
        binary reward per attempt. Run at once, or one step ahead (`RolloutPipeline`)."""
        problems, first_attempts = self.next_problems()
        seed = self.cfg.train.seed * 1_000_003 + step

        def job() -> Rollout:
            timings: dict[str, float] = {}
            traces, r1, r2, stats = self.generate_and_verify(
                problems, first_attempts, seed, timings
            )
            return Rollout(step, traces, r1, r2, stats, timings)

        return job

    def step(self, stage: int) -> dict:
        """One SCoRe update."""
        cfg = self.cfg
        self.global_step += 1
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # generate and verify (one-step-off: generated during the previous step's learn)
        rollout = self.rollouts.take(self.global_step, timings)
        traces, r1, r2, verify_stats = rollout.traces, rollout.r1, rollout.r2, rollout.verify_stats
        timings.update(rollout.timings)

        # rewards and advantages (Stage I / II rewards, credit across attempts, RLOO)
        reward1, reward2 = attempt_rewards(
            stage, r1, r2, cfg.algo.alpha, cfg.algo.stage1_train_attempt1, cfg.algo.single_turn
        )
        offline = torch.tensor([t.attempt1_offline for t in traces])
        advantage1, advantage2, weight1 = trace_advantages(
            reward1,
            reward2,
            cfg.train.samples_per_prompt,
            cfg.rollout.attempt2_samples,
            cfg.algo.credit,
            cfg.algo.gamma,
            offline,
        )
        # Traces older than the staleness bound get no policy gradient (none on schedule).
        stale = stale_traces(traces, self.version, cfg.train.max_staleness)
        advantage1 = advantage1.masked_fill(stale, 0.0)
        advantage2 = advantage2.masked_fill(stale, 0.0)
        weight1 = weight1.masked_fill(stale, 0.0)

        # learn (one-step-off: the next step's rollout generates meanwhile), then sync weights
        if self.global_step < len(self.schedule):
            self.rollouts.prefetch(self.global_step + 1)
        batch = collate_traces(traces, self.pad_id)
        learn_stats, handle = self.learn_and_sync(
            batch, advantage1, advantage2, stage, weight1, timings
        )

        # log
        timings["time/step"] = time.perf_counter() - started
        on_policy1 = weight1 > 0
        record = {
            "stage": stage,
            "step": self.global_step,
            "weight_version": self.version,
            "rollout_weight_version": min(t.weight_version for t in traces),
            # weight versions the learner was ahead of this batch's oldest trace when it learned
            "rollout/staleness": self.version - 1 - min(t.weight_version for t in traces),
            "rollout/stale_dropped": stale.float().mean().item(),
            "reward/attempt1": reward1.mean().item(),
            "reward/attempt2": reward2.mean().item(),
            "acc/t1": r1.mean().item(),
            "acc/t2": r2.mean().item(),
            **self.signal_metrics(traces, r1, r2),
            # Share of traces that carry a policy-gradient signal: RLOO gives 0 to every
            # sample of a group whose rewards are all equal (why a step can have no gradient).
            "signal/attempt1": (advantage1[on_policy1] != 0).float().mean().nan_to_num().item(),
            "signal/attempt2": (advantage2 != 0).float().mean().item(),
            "signal/offline_traces": offline.float().mean().item(),
            "tokens/generated": sum(t.num_generated for t in traces),
            "truncated/attempt1": sum(t.attempt1_truncated for t in traces) / len(traces),
            "truncated/attempt2": sum(t.attempt2_truncated for t in traces) / len(traces),
            "sync/bytes": handle.num_bytes,
            **learn_stats,
            **verify_stats.as_metrics(),
            "restarts/rollout": self.actors.rollout.restarts,
            "restarts/verifier": self.actors.verifiers.restarts,
            "restarts/learner": self.learner_restarts,
            **timings,
        }
        self.metrics.log(record, self.global_step)
        return record

    def signal_metrics(
        self, traces: list[Trace], r1: torch.Tensor, r2: torch.Tensor
    ) -> dict[str, float]:
        """Fixes, breaks and changed answers among this step's traces (`score_ray.transitions`):
        what Stage I and the Stage II bonus have to reinforce."""
        fmt = self.cfg.prompts.answer_format
        counts = transition_counts(r1.tolist(), r2.tolist())
        changes = answer_change_metrics(
            [extract_answer(t.attempt1_text, fmt) for t in traces],
            [extract_answer(t.attempt2_text, fmt) for t in traces],
            r1.tolist(),
        )
        return {
            "train/fixes": counts["fixes"],
            "train/breaks": counts["breaks"],
            "train/delta_i2c": counts["fixes"] / len(traces),
            "train/delta_c2i": counts["breaks"] / len(traces),
            **{f"signal/{name}": value for name, value in changes.items()},
        }

    def generate_and_verify(
        self,
        problems: list[Problem],
        first_attempts: list[list[Attempt] | None],
        seed: int,
        timings: dict[str, float],
    ) -> tuple[list[Trace], torch.Tensor, torch.Tensor, VerifyStats]:
        """Sample S * M traces per problem and score both attempts; returns traces, r1 [N],
        r2 [N] in the (problem, first attempt, revision) order.

        Streamed (`rollout.stream_verify`): each trace is submitted to the verifier pool as
        soon as its worker yields it. Timings: `time/generate` until the last trace
        arrived, `time/verify` the wait for rewards after that (what verification adds to
        the step), `time/verify_busy` the wall time verifiers were working.
        """
        samples, revisions = self.cfg.train.samples_per_prompt, self.cfg.rollout.attempt2_samples
        given = first_attempts if any(a is not None for a in first_attempts) else None
        rollout = self.actors.rollout
        if not self.cfg.rollout.stream_verify:
            with _timed(timings, "time/generate"):
                traces = rollout.generate(problems, samples, False, seed, revisions, given)
            with _timed(timings, "time/verify"):
                r1, r2, stats = self.verify(traces)
            timings["time/verify_busy"] = stats.seconds
            return traces, r1, r2, stats
        found: list[Trace | None] = [None] * (len(problems) * samples * revisions)
        scoring = self.actors.verifiers.start(2 * len(found))
        with _timed(timings, "time/generate"), _drained_on_error(scoring):
            for chunk in rollout.stream(problems, samples, False, seed, revisions, given):
                for index, trace in chunk:
                    found[index] = trace
                scoring.submit(
                    [item for index, trace in chunk for item in self._attempt_items(index, trace)]
                )
                scoring.poll()
        with _timed(timings, "time/verify"):
            rewards, stats = scoring.finish()
        timings["time/verify_busy"] = stats.seconds
        traces = [trace for trace in found if trace is not None]
        if len(traces) != len(found):
            raise RuntimeError(f"rollout returned {len(traces)} of {len(found)} traces")
        return traces, *_per_attempt(rewards), stats

    def _attempt_items(self, index: int, trace: Trace) -> list[tuple[int, tuple[Problem, str]]]:
        """Trace `index`'s two attempts as verifier items at positions 2 * index (+1)."""
        problem = self.problems[trace.problem_uid]
        return [
            (2 * index, (problem, trace.attempt1_text)),
            (2 * index + 1, (problem, trace.attempt2_text)),
        ]

    def verify(self, traces: list[Trace]) -> tuple[torch.Tensor, torch.Tensor, VerifyStats]:
        """Score both attempts of every trace; returns r1 [N], r2 [N]."""
        items = [
            item
            for index, trace in enumerate(traces)
            for _, item in self._attempt_items(index, trace)
        ]
        rewards, stats = self.actors.verifiers.score(items)
        return *_per_attempt(rewards), stats

    def evaluate(self, tag: str) -> dict[str, float]:
        """Greedy two-attempt evaluation on the dev split (the held-out split without one)."""
        cap = self.cfg.train.eval_max_problems
        problems = self.eval_problems[:cap] if cap else self.eval_problems
        started = time.perf_counter()
        traces = self.actors.rollout.generate(problems, 1, greedy=True, seed=0)
        r1, r2, _ = self.verify(traces)
        result = self_correction_metrics(r1.tolist(), r2.tolist())
        record = {
            "eval": tag,
            "step": self.global_step,
            "weight_version": self.version,
            "eval/problems": len(problems),
            "eval/split": self.eval_split,
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


def _per_attempt(rewards: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards laid out [r1, r2, r1, r2, ...] (two per trace) -> r1 [N], r2 [N]."""
    pairs = torch.tensor(rewards, dtype=torch.float32).view(-1, 2)
    return pairs[:, 0].contiguous(), pairs[:, 1].contiguous()


@contextmanager
def _drained_on_error(scoring: Any):
    """If generation fails (a rollout worker that cannot be replaced, and the run recovers),
    finish the scoring round first: its verifiers stay busy until their items are collected,
    and the next step would wait on them forever."""
    try:
        yield
    except Exception:
        scoring.finish()
        raise


class _timed:
    def __init__(self, into: dict[str, float], key: str) -> None:
        self.into, self.key = into, key

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.into[self.key] = time.perf_counter() - self.start


def filter_prompt_lengths(
    problems: list[Problem], builder: PromptBuilder, cfg: Config
) -> tuple[list[Problem], int]:
    """Drop problems whose two attempts cannot fit in model.max_model_len."""
    budget = cfg.model.max_model_len - 2 * cfg.rollout.max_new_tokens - builder.max_bridge_len()
    kept = [p for p in problems if len(builder.first_prompt_ids(p.question)) <= budget]
    return kept, len(problems) - len(kept)
