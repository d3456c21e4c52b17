"""RolloutWorker: a vLLM engine that produces two-attempt self-correction traces.

API (all the driver needs):
    generate(problems, samples_per_prompt, greedy, seed, attempt2_samples, first_attempts)
                                                         -> list[Trace]
    generate_stream(same arguments)  -> yields list[(index, Trace)] (a Ray streaming generator)
    sample_first_attempts(problems, samples_per_prompt, seed) -> list[list[Attempt]]
    sequence_logprobs(token_id_lists)                    -> list[list[float]]
    update_weights(handle)                               -> int (new version)
    weight_version()                                     -> int
    init_weight_transport(init_info)                     -> None (nccl / cuda_ipc, once)
    sleep() / wake_up(tags)                              colocated: free the GPU for the learner
                                                         (order and level: rollout/sleep.py)
    continue_attempt(prompt_ids, greedy, seed)           -> list[(ids, text)] (K-attempt eval)

`generate_stream` drives the engine step by step: each sample is its own
request, its second attempts (x1 + y1 + bridge, spliced as token ids) join the
running batch as soon as its attempt 1 finishes (continuous batching; x1 + y1
is still in the prefix cache), and finished traces are yielded at once, so the
driver can score them while the engine goes on; `generate` collects them. Every
trace is tagged with the weight version that produced it; `update_weights`
only accepts a version newer than the one it holds, so a rollout worker can
never silently go back to stale weights or apply a duplicate. (Versions
usually rise by one; a fresh or replacement worker jumps to the newest.)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

from score_ray.algo.traces import Attempt, Trace
from score_ray.config import Config
from score_ray.learner.lora import ADAPTER_TRANSPORT, vllm_max_lora_rank
from score_ray.placement import pin_threads, thread_report, torch_threads
from score_ray.prompts import PromptBuilder
from score_ray.rollout.sleep import SLEEP_LEVEL, SleepState
from score_ray.tasks.base import Problem
from score_ray.transport import (
    MIB,
    StaleWeightsError,
    WeightHandle,
    choose_transport,
    make_transport,
)

CPU_BATCHED_TOKENS = 8192
"""Prompt tokens per engine step on CPU, where prompts are never split (see engine_kwargs)."""

VLLM_BACKENDS = {"nccl": "nccl", "cuda_ipc": "ipc"}
"""Our transport -> vLLM's weight_transfer_config backend."""


def rollout_env(cfg: Config) -> dict[str, str]:
    """Environment for the rollout actor's process, set before vLLM is imported."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.rollout.kv_cache_gib))),
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
    if cfg.rollout.num_gpus == 0 and cfg.rollout.tensor_parallel_size == 1:
        # One engine per actor: keep the engine core in this process, so weight
        # updates pass by reference and no extra process competes for the cores.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if choose_transport(cfg) == "cuda_ipc":
        # IPC handles cross vLLM's RPC pickled (as its HTTP client sends them); the engine
        # refuses to unpickle them without this. Only this actor's own processes talk there.
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    return env


def engine_kwargs(cfg: Config, model_path: str, worker_index: int) -> dict[str, Any]:
    """Arguments of the rollout actor's `vllm.LLM`."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype=cfg.rollout.dtype,
        max_model_len=cfg.model.max_model_len,
        enforce_eager=cfg.rollout.enforce_eager,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        seed=cfg.train.seed + worker_index,
        tensor_parallel_size=cfg.rollout.tensor_parallel_size,
        worker_extension_cls="score_ray.rollout.vllm_extension.WeightReceiverExtension",
        enable_prefix_caching=True,
        # Sampled tokens' log-probs under the distribution they were drawn from (logits / T),
        # which the learner reproduces; vLLM's default is the raw (T = 1) log-probs.
        logprobs_mode="processed_logprobs",
    )
    if cfg.rollout.block_size:
        kwargs["block_size"] = cfg.rollout.block_size
    backend = executor_backend(cfg)
    if backend:
        kwargs["distributed_executor_backend"] = backend
    if cfg.rollout.num_gpus == 0:
        # vLLM-cpu crashes ("CPU Generator does not use offset") when a seeded request's
        # prompt is split across engine steps: it rewinds the request's torch.Generator by
        # an offset, which only CUDA generators have. Every training request is seeded, so
        # prompts are scheduled whole (seen with 128 requests of ~170 prompt tokens).
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(cfg.model.max_model_len, CPU_BATCHED_TOKENS)
    transfer = VLLM_BACKENDS.get(choose_transport(cfg))
    if transfer:
        kwargs["weight_transfer_config"] = {"backend": transfer}
    if cfg.rollout.colocate_with_learner:
        kwargs["enable_sleep_mode"] = True
    if serves_adapter(cfg):
        # One adapter at a time: each sync replaces the previous version's.
        kwargs.update(
            enable_lora=True, max_loras=1, max_lora_rank=vllm_max_lora_rank(cfg.learner.lora.rank)
        )
    return kwargs


def executor_backend(cfg: Config) -> str | None:
    """vLLM's `distributed_executor_backend` for the rollout actor's engine (None: vLLM's
    own choice, "uni" in this process, when there is one rank).

    With tensor_parallel_size > 1, vLLM 0.32 picks "ray" whenever the calling process is in
    a Ray placement group (`ParallelConfig.__post_init__`), as our rollout actor is. Its Ray
    executor then requires bundles of at most one GPU, one per rank, from that group
    (`v1/executor/ray_utils.py`: "Placement group bundle cannot have more than 1 GPU");
    our actor's bundle holds all its tp GPUs, so the engine cannot start, and with
    fractional bundles it waits for GPUs the actor itself holds. "mp" starts the tp workers
    as child processes of the actor (spawned: vLLM forces spawn in a Ray actor), on the
    GPUs Ray gave it (CUDA_VISIBLE_DEVICES), all on its node.
    """
    return "mp" if cfg.rollout.tensor_parallel_size > 1 else None


def serves_adapter(cfg: Config) -> bool:
    """learner.lora.sync=adapter: the engine keeps the base weights and serves the trained
    weights as a vLLM LoRA adapter, one LoRARequest per weight version."""
    return cfg.learner.lora.rank > 0 and cfg.learner.lora.sync == "adapter"


def sleep_level(cfg: Config) -> int:
    """vLLM sleep level of a colocated engine: 2 (weights discarded, `rollout.sleep`) unless it
    serves a LoRA adapter. Level 2's weights come back only with a full sync, and an adapter
    sync sends no base weights, so such an engine sleeps at level 1 (weights kept in CPU)."""
    return 1 if serves_adapter(cfg) else SLEEP_LEVEL


class RolloutWorker:
    def __init__(self, cfg: Config, model_path: str, worker_index: int) -> None:
        for key, value in rollout_env(cfg).items():
            os.environ.setdefault(key, value)
        import torch
        from vllm import LLM

        # Before the engine starts: vLLM-cpu refuses set_num_threads after its binding, and
        # the threads it starts inherit the pinning.
        pin_threads(cfg.rollout.cpu_cores, "rollout.cpu_cores")
        torch.set_num_threads(
            torch_threads(cfg.rollout.threads, cfg.rollout.num_workers, cfg.rollout.cpu_cores)
        )
        self.cfg = cfg
        self.worker_index = worker_index
        self.llm = LLM(**engine_kwargs(cfg, model_path, worker_index))
        self.prompts = PromptBuilder(self.llm.get_tokenizer(), cfg.prompts)
        self.transport = make_transport(choose_transport(cfg), cfg.sync.bucket_mb * MIB)
        self._version = 0
        self._sleep = SleepState(level=sleep_level(cfg))
        self._lora: Any = None  # the LoRARequest of the adapter version served (adapter sync)
        self._calls = itertools.count()
        self._cache = {"attempt1": [0, 0], "attempt2": [0, 0]}
        """Per attempt: [prompt tokens, of which prefix-cache hits] since start."""

    def ready(self) -> bool:
        return True

    def thread_report(self) -> dict[str, Any]:
        """This actor's cores and torch threads (`score_ray.placement.thread_report`)."""
        return thread_report()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def weight_version(self) -> int:
        return self._version

    def generate(
        self,
        problems: list[Problem],
        samples_per_prompt: int,
        greedy: bool,
        seed: int,
        attempt2_samples: int = 1,
        first_attempts: list[list[Attempt] | None] | None = None,
    ) -> list[Trace]:
        """All traces of `generate_stream`, in index order: S * M per problem, grouped by
        problem, then by first attempt."""
        found: dict[int, Trace] = {}
        stream = self.generate_stream(
            problems, samples_per_prompt, greedy, seed, attempt2_samples, first_attempts
        )
        for finished in stream:
            found.update(finished)
        return [found[index] for index in range(len(found))]

    def sample_first_attempts(
        self, problems: list[Problem], samples_per_prompt: int, seed: int
    ) -> list[list[Attempt]]:
        """S sampled first attempts per problem (at the attempt-1 temperature), no attempt 2:
        the offline first-attempt pool is drawn with this from the base model."""
        self._sleep.check_serving()
        prompts = [self.prompts.first_prompt_ids(p.question) for p in problems]
        seeds = [request_seed(seed, 1, i, samples_per_prompt) for i in range(len(problems))]
        return self._sample(prompts, samples_per_prompt, False, seeds, "attempt1")

    def generate_stream(
        self,
        problems: list[Problem],
        samples_per_prompt: int,
        greedy: bool,
        seed: int,
        attempt2_samples: int = 1,
        first_attempts: list[list[Attempt] | None] | None = None,
    ) -> Iterator[list[tuple[int, Trace]]]:
        """Two-attempt traces, yielded as they finish: lists of (index, trace), where
        index = (problem * S + sample) * M + revision, with S = samples_per_prompt first
        attempts per problem and M = attempt2_samples second attempts per first attempt.

        `first_attempts[p]`, when given and not None, holds problem p's S first attempts
        (offline ones, sampled earlier): only their second attempts are generated.

        Call it as a Ray streaming generator (`.options(num_returns="streaming")`). Seeds:
        sample j of problem p starts from problem p's attempt-1 seed + j (as vLLM's n > 1
        fan-out does), attempt 2 of trace i from its own. The engine is stepped in this
        process, so the batch composition, and with it the output, does not depend on timing.
        """
        self._sleep.check_serving()
        engine = self.llm.llm_engine
        call = next(self._calls)
        first_prompts = [self.prompts.first_prompt_ids(p.question) for p in problems]
        revisions = attempt2_samples
        pending: dict[str, tuple[int, int]] = {}  # request id -> (first index, revision or -1)
        attempt1: dict[int, tuple[Attempt, list[int]]] = {}  # first index -> (y1, bridge)
        done_revisions: dict[int, int] = {}

        def queue_revisions(first_index: int, first: Attempt) -> None:
            problem = first_index // samples_per_prompt
            bridge = self.prompts.bridge_ids(first.ids)
            attempt1[first_index] = (first, bridge)
            prompt = first_prompts[problem] + first.ids + bridge
            for revision in range(revisions):
                index = first_index * revisions + revision
                request_id = f"score-ray-{call}-a2-{index}"
                self._add_request(
                    engine, request_id, prompt, greedy, request_seed(seed, 2, index), 2
                )
                pending[request_id] = (first_index, revision)

        for first_index in range(len(problems) * samples_per_prompt):
            problem, sample = divmod(first_index, samples_per_prompt)
            given = first_attempts[problem] if first_attempts else None
            if given is not None:
                queue_revisions(first_index, given[sample])
                continue
            request_id = f"score-ray-{call}-a1-{first_index}"
            first_seed = request_seed(seed, 1, problem, samples_per_prompt) + sample
            self._add_request(engine, request_id, first_prompts[problem], greedy, first_seed, 1)
            pending[request_id] = (first_index, -1)
        while engine.has_unfinished_requests():
            finished = []
            for output in engine.step():
                if not output.finished:
                    continue
                first_index, revision = pending.pop(output.request_id)
                completion = _completion(output.outputs[0])
                if revision < 0:  # attempt 1 done: queue its attempts 2 at once
                    self._count("attempt1", output)
                    queue_revisions(first_index, completion)
                    continue
                self._count("attempt2", output)
                first, bridge = attempt1[first_index]
                problem = first_index // samples_per_prompt
                offline = bool(first_attempts and first_attempts[problem] is not None)
                trace = self._trace(
                    problems[problem], first_prompts[problem], first, bridge, completion, offline
                )
                finished.append((first_index * revisions + revision, trace))
                done_revisions[first_index] = done_revisions.get(first_index, 0) + 1
                if done_revisions[first_index] == revisions:
                    del attempt1[first_index]
            if finished:
                yield finished

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Prompt tokens and prefix-cache hits per attempt since the engine started
        (attempt 2's prompt x1 + y1 + bridge should mostly hit the cache)."""
        return {
            attempt: {"prompt_tokens": tokens, "cached_tokens": cached}
            for attempt, (tokens, cached) in self._cache.items()
        }

    def _trace(
        self,
        problem: Problem,
        prompt_ids: list[int],
        first: Attempt,
        bridge: list[int],
        second: Attempt,
        offline: bool = False,
    ) -> Trace:
        return Trace(
            problem_uid=problem.uid,
            prompt_ids=prompt_ids,
            attempt1_ids=first.ids,
            bridge_ids=bridge,
            attempt2_ids=second.ids,
            attempt1_text=first.text,
            attempt2_text=second.text,
            attempt1_logprobs=first.logprobs,
            attempt2_logprobs=second.logprobs,
            weight_version=self._version,
            attempt1_truncated=first.truncated,
            attempt2_truncated=second.truncated,
            attempt1_offline=offline,
        )

    def _params(self, n: int, greedy: bool, seed: int, attempt: int) -> Any:
        from vllm import SamplingParams

        cfg = self.cfg
        temperature = cfg.rollout.temperature if attempt == 1 else cfg.attempt2_temperature
        return SamplingParams(
            n=n,
            temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else cfg.rollout.top_p,
            max_tokens=cfg.rollout.max_new_tokens,
            logprobs=0,
            seed=seed,
            stop_token_ids=sorted(self.prompts.stop_token_ids),
        )

    def _add_request(
        self,
        engine: Any,
        request_id: str,
        prompt_ids: list[int],
        greedy: bool,
        seed: int,
        attempt: int,
    ) -> None:
        from vllm import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = self._params(1, greedy, seed, attempt)
        params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate does
        engine.add_request(
            request_id,
            TokensPrompt(prompt_token_ids=prompt_ids),
            params,
            lora_request=self._lora,
        )

    def _count(self, attempt: str, result: Any) -> None:
        counts = self._cache[attempt]
        counts[0] += len(result.prompt_token_ids or [])
        counts[1] += result.num_cached_tokens or 0

    def _sample(
        self,
        prompt_ids: list[list[int]],
        n: int,
        greedy: bool,
        seeds: list[int],
        attempt: str,
    ) -> list[list[Attempt]]:
        """For each prompt, n completions, prompt i sampled from `seeds[i]` at the temperature
        of `attempt` ("attempt1"; any later attempt samples at attempt 2's); prefix-cache hits
        are counted under `attempt`."""
        from vllm import TokensPrompt

        number = 1 if attempt == "attempt1" else 2
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        params = [self._params(n, greedy, request, number) for request in seeds]
        results = self.llm.generate(requests, params, use_tqdm=False, lora_request=self._lora)
        for result in results:
            self._count(attempt, result)
        return [[_completion(out) for out in result.outputs] for result in results]

    def sequence_logprobs(self, token_id_lists: list[list[int]]) -> list[list[float]]:
        """log p(token_t | tokens_<t) for t >= 1 of each sequence, under the current weights."""
        from vllm import SamplingParams, TokensPrompt

        self._sleep.check_serving()

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in token_id_lists]
        results = self.llm.generate(requests, params, use_tqdm=False, lora_request=self._lora)
        out = []
        for ids, result in zip(token_id_lists, results, strict=True):
            # prompt_logprobs[0] is None (no context); entry t maps token id -> Logprob
            out.append([step[ids[t]].logprob for t, step in enumerate(result.prompt_logprobs) if t])
        return out

    def update_weights(self, handle: WeightHandle) -> int:
        if handle.version <= self._version:
            raise StaleWeightsError(
                f"rollout worker {self.worker_index} holds version {self._version}, "
                f"got version {handle.version}; versions must increase"
            )
        self._sleep.check_loadable()
        if handle.transport == ADAPTER_TRANSPORT:
            loaded = self._load_adapter(handle)
        else:
            loaded = self.transport.receive(self.llm, handle)
        if loaded != handle.num_tensors:
            raise RuntimeError(f"weight update loaded {loaded} tensors of {handle.num_tensors}")
        self._sleep.loaded()
        # Cached prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()
        self._version = handle.version
        return self._version

    def _load_adapter(self, handle: WeightHandle) -> int:
        """Adapter-only sync: write the adapter's files to this node's disk (vLLM's LoRA
        loader reads a folder), load them as LoRA `handle.version`, serve it from now on,
        and drop the previous version's adapter and files."""
        import shutil
        import tempfile
        from pathlib import Path

        import ray
        from vllm.lora.request import LoRARequest

        files: dict[str, bytes] = ray.get(handle.payload)
        folder = Path(tempfile.mkdtemp(prefix=f"score-ray-lora-v{handle.version}-"))
        for name, data in files.items():
            (folder / name).write_bytes(data)
        request = LoRARequest(f"score-ray-v{handle.version}", handle.version, str(folder))
        engine = self.llm.llm_engine
        if not engine.add_lora(request):  # load now, so the sync's time includes it
            raise RuntimeError(f"vLLM refused LoRA adapter version {handle.version}")
        previous, self._lora = self._lora, request
        if previous is not None:
            engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        return handle.num_tensors

    def init_weight_transport(self, init_info: dict[str, Any]) -> None:
        """Join the learner's transfer group (nccl; blocks until every rank has joined)."""
        self.transport.connect_receiver(self.llm, init_info)

    def sleep(self) -> None:
        """Colocated: release weights and KV cache while the learner trains (level 2: the
        weights are dropped, the next sync replaces them; see rollout/sleep.py)."""
        if self._sleep.to_sleep():
            self.llm.sleep(level=self._sleep.level)
            self._sleep.slept()

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Map back the memory of `tags` ("weights", "kv_cache"; None: all). The KV cache
        wakes only after a sync has loaded new weights."""
        wake = self._sleep.to_wake(tags)
        if wake:
            self.llm.wake_up(tags=wake)
            self._sleep.woke(wake)

    # -- Evaluation with K attempts (`score_ray.evaluate.run_attempts`, `score-ray eval`) --

    def continue_attempt(
        self, prompt_ids: list[list[int]], greedy: bool, seed: int
    ) -> list[tuple[list[int], str]]:
        """One more attempt per token-id prompt (a conversation so far + bridge), in order,
        as (token ids, text)."""
        self._sleep.check_serving()
        seeds = [request_seed(seed, 0, i) for i in range(len(prompt_ids))]
        sampled = self._sample(prompt_ids, 1, greedy, seeds, "attempt2")
        return [(attempt.ids, attempt.text) for (attempt,) in sampled]


def request_seed(seed: int, attempt: int, index: int, fan_out: int = 1) -> int:
    """The sampling seed of request `index` of `attempt` in a call seeded with `seed`.

    Every request needs its own random stream: with one seed for a whole batch, vLLM gives
    every request the same draws, so the samples of a batch are correlated (sample j of
    every problem, and every second attempt, drew the same uniforms).
    A request fanned out into n samples uses seeds s .. s + n - 1 (vLLM adds j to child j),
    so requests are spaced `fan_out` apart.
    """
    return (seed * 1_000_003 + attempt * 100_003) * 1_000_003 % 2**40 + index * fan_out


def _completion(output: Any) -> Attempt:
    """One vLLM completion as an Attempt: its log-probs are the sampling distribution's
    (`logprobs_mode="processed_logprobs"`, i.e. at the request's temperature)."""
    ids = list(output.token_ids)
    logprobs = [
        step[token].logprob for step, token in zip(output.logprobs or [], ids, strict=False)
    ]
    return Attempt(ids, logprobs, output.text, truncated=output.finish_reason == "length")
