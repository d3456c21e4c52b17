"""`score-ray plan`: check a config against a cluster before paying for it. Starts nothing
(no Ray, no actor, no model weights) and needs no GPU.

    score-ray plan --config conf/paper/math_qwen2.5-1.5b-instruct.yaml \\
        --cluster cluster/aws-gpu.yaml task.path=data/math/train.jsonl ...
    score-ray plan --config conf/tiny.yaml          # this machine, as `train` would start Ray

Steps, each the code a real run uses:

1. load and validate the config (`config.load_config`, as `score-ray train`);
2. lay the actors out (`placement.layout`) and check them against the nodes
   (`placement.check_fits`, which a run calls against the live cluster before it reserves
   anything): each node type of `--cluster` at its most nodes (`cluster_spec`), or this
   machine with the CPUs `launch.local_cpus` gives a local Ray;
3. name the weight-sync transport (`transport.choose_transport`);
4. estimate memory per actor from the parameter count (`model_facts`), dtype and ZeRO stage,
   and fail when such a lower bound already exceeds a GPU's memory (or, on this machine,
   its RAM);
5. count the tokens generated and trained per step.

Memory is model states as the ZeRO paper counts them (Rajbhandari et al., 2020, Section 3.1:
parameters, gradients, and 12 bytes of optimizer state per parameter for Adam with fp32
master weights, each divided over the ranks by the ZeRO stage), plus the frozen reference
model and the learner's largest activation, the logits of one micro-batch. Other
activations, the CUDA context and allocator slack are not counted: a learner that the plan
says fits may still run out of memory, one that it says does not fit will.

Exit status: 0 fits, 2 config error, 3 the cluster cannot hold the layout.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from score_ray.cluster_spec import NodeType, local_node_type, read_cluster, with_gpu_memory
from score_ray.config import CODE_TASK_SOURCES, Config, load_config
from score_ray.launch import add_config_arguments, local_cpus
from score_ray.learner.actor import (
    REFERENCE_ADAPTER_DISABLED,
    REFERENCE_SHARDED,
    reference_placement,
)
from score_ray.model_facts import ModelFacts, model_facts
from score_ray.placement import (
    LayoutError,
    RoleDemand,
    fits,
    gpu_layout_problems,
    layout,
    layout_problems,
    totals,
)
from score_ray.transport import choose_transport

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAM_MIXED_BYTES = 12
"""Per parameter: fp32 master copy + Adam's two fp32 moments (ZeRO paper's K = 12)."""
VERIFIER_RSS_BYTES = 207 * 2**20
"""A verifier actor's RSS, measured (benchmarks/memory.py, 2026-11-21)."""


def add_parser(commands: Any) -> None:
    """Register `score-ray plan` on the CLI's subparsers."""
    parser = commands.add_parser(
        "plan", help="dry run: check a config's layout and memory against a cluster file"
    )
    add_config_arguments(parser, "key=value overrides, as for train")
    parser.add_argument(
        "--cluster",
        metavar="FILE",
        help="a `ray up` config or KubeRay manifest (default: this machine)",
    )
    parser.add_argument(
        "--model-config",
        metavar="PATH",
        help="the model's config.json, when model.path cannot be read here (a hub id offline)",
    )
    parser.add_argument(
        "--gpu-memory-gib",
        type=float,
        help="memory of each GPU, for cluster files that do not say (KubeRay)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    target, node_types, notes = cluster_nodes(cfg, args.cluster)
    if args.gpu_memory_gib:
        node_types = with_gpu_memory(node_types, args.gpu_memory_gib)
    facts = model_facts(cfg.model, args.model_config)
    plan = make_plan(cfg, node_types, facts)
    print(format_plan(plan, target, notes))
    if plan.problems:
        raise LayoutError("the cluster cannot hold this layout:\n  " + "\n  ".join(plan.problems))
    print("plan: fits")
    return 0


def cluster_nodes(cfg: Config, cluster: str | None) -> tuple[str, list[NodeType], list[str]]:
    """The node types to plan against, a name for them, and notes."""
    if cluster:
        types, notes = read_cluster(cluster)
        return cluster, types, notes
    notes = []
    if cfg.ray_address or os.environ.get("RAY_ADDRESS"):
        notes.append(
            "RAY_ADDRESS / ray_address is set: `score-ray train` would join that cluster; "
            "this plan checks this machine (pass --cluster FILE for a cluster's node types)"
        )
    gpus, gpu_memory = local_gpus()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return "this machine", [local_node_type(local_cpus(cfg), gpus, memory, gpu_memory)], notes


def local_gpus() -> tuple[int, float | None]:
    """GPUs torch sees here, and the smallest one's memory in GiB."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return 0, None
    smallest = min(torch.cuda.get_device_properties(i).total_memory for i in range(count))
    return count, smallest / GIB


# -- Estimates -----------------------------------------------------------------------------


@dataclass
class Estimate:
    """Memory of one actor of a role, on its device (one GPU, or its node's RAM)."""

    role: str
    device: str
    parts: dict[str, float]
    """name -> bytes"""
    note: str = ""
    reserved: float = 0.0
    """Bytes the actor reserves whatever it needs (vLLM's share of a GPU)."""
    kv_tokens: int | None = None
    """Rollout: tokens its KV cache holds (None: unknown GPU)."""

    @property
    def total(self) -> float:
        return max(sum(self.parts.values()), self.reserved)


def learner_estimate(cfg: Config, facts: ModelFacts) -> Estimate:
    """One learner rank: model states divided by the ZeRO stage, the reference model (whole;
    under ZeRO-3 a 1/ranks shard, none of it resident on a GPU shared with vLLM, where its
    shards stay in CPU memory: `learner.actor.reference_placement`), and the logits of one
    micro-batch (from the first attempt token on, fp32 for the log-softmax:
    `algo.token_logprobs`)."""
    learner = cfg.learner
    params, ranks, stage = facts.parameters, learner.world_size, learner.zero_stage
    width = DTYPE_BYTES[cfg.model.dtype]
    on_gpu = learner.num_gpus > 0
    # learner.actor.deepspeed_config turns mixed precision (bf16 or fp16, with fp32 master
    # weights) on for low-precision weights on GPUs; every ZeRO stage >= 1 keeps an fp32
    # partition beside the parameters too.
    mixed = on_gpu and cfg.model.dtype in ("bfloat16", "float16")
    optimizer = ADAM_MIXED_BYTES if (mixed or stage >= 1) else 2 * width
    loss_tokens = 2 * cfg.rollout.max_new_tokens
    logits_width = width + (4 if width != 4 else 0)  # the .float() copy, unless already fp32
    parts = {
        "parameters": params * width / (ranks if stage >= 3 else 1),
        "gradients": params * width / (ranks if stage >= 2 else 1),
        "optimizer": params * optimizer / (ranks if stage >= 1 else 1),
        "reference": reference_bytes(cfg, params * width, on_gpu),
        "logits": learner.micro_batch_size * loss_tokens * facts.vocab_size * logits_width,
    }
    precision = f"{cfg.model.dtype} + fp32 master" if mixed else cfg.model.dtype
    note = f"{precision}, ZeRO-{stage} over {ranks} rank{'s' if ranks > 1 else ''}"
    return Estimate("learner", "GPU" if on_gpu else "CPU", parts, note)


def reference_bytes(cfg: Config, whole: float, on_gpu: bool) -> float:
    """The reference model's bytes on one learner rank's device during a step."""
    placement = reference_placement(cfg, on_gpu)
    if placement == REFERENCE_ADAPTER_DISABLED:
        return 0.0  # LoRA: the policy with its adapter disabled, no second copy
    if placement != REFERENCE_SHARDED:
        return whole  # resident, or offloaded between steps but whole during one
    if on_gpu and cfg.rollout.colocate_with_learner:
        return 0.0  # ZeRO-3 parameter offload: only the layer being run comes to the GPU
    return whole / cfg.learner.world_size


def rollout_estimate(cfg: Config, facts: ModelFacts, gpu_memory_gib: float | None) -> Estimate:
    """One rollout actor, per tensor-parallel GPU: its weights share, and the KV cache: on a
    GPU what vLLM's `gpu_memory_utilization` leaves after the weights, on CPU the
    VLLM_CPU_KVCACHE_SPACE the actor sets (`rollout.worker.rollout_env`)."""
    from score_ray.rollout.worker import rollout_env

    rollout = cfg.rollout
    width = DTYPE_BYTES[rollout.dtype]
    tp = rollout.tensor_parallel_size
    weights = facts.parameters * width / tp
    if rollout.num_gpus > 0:
        if gpu_memory_gib is None:
            note = f"{rollout.dtype}, TP {tp}; KV cache: gpu_memory_utilization of an unknown GPU"
            return Estimate("rollout", "GPU", {"weights": weights}, note)
        reserved = rollout.gpu_memory_utilization * gpu_memory_gib * GIB
        kv = max(0.0, reserved - weights)
        tokens = int(kv * tp / facts.kv_bytes_per_token(width))
        note = (
            f"{rollout.dtype}, TP {tp}; vLLM reserves {rollout.gpu_memory_utilization:g} x "
            f"{gpu_memory_gib:g} GiB, KV cache for {tokens:,} tokens"
        )
        return Estimate(
            "rollout", "GPU", {"weights": weights, "kv cache": kv}, note, reserved, tokens
        )
    kv = int(rollout_env(cfg)["VLLM_CPU_KVCACHE_SPACE"]) * GIB
    tokens = int(kv / facts.kv_bytes_per_token(width))
    note = f"{rollout.dtype}, CPU engine; KV cache for {tokens:,} tokens"
    return Estimate("rollout", "CPU", {"weights": weights, "kv cache": kv}, note, 0.0, tokens)


def verifier_estimate(cfg: Config) -> Estimate:
    parts = {"process (measured)": float(VERIFIER_RSS_BYTES)}
    if cfg.task.source in CODE_TASK_SOURCES:
        parts["sandboxed program"] = cfg.verifier.sandbox_memory_mb * 2**20
    return Estimate("verifier", "CPU", parts, "one item at a time")


@dataclass
class Tokens:
    first_attempts: int
    """prompts_per_step x samples_per_prompt"""
    traces: int
    """first attempts x rollout.attempt2_samples second attempts each"""
    generated: int
    """Upper bound: every attempt runs to max_new_tokens."""
    trained: int
    """Tokens that carry the loss (both attempts), same bound."""
    forward: int
    """Tokens through the policy (and again the reference) per step, at most max_model_len
    per trace."""
    micro_batches_per_rank: int
    steps: int
    eval_generated: int
    """Per evaluation: held-out problems x 2 greedy attempts x max_new_tokens."""


def tokens_per_step(cfg: Config) -> Tokens:
    first_attempts = cfg.train.prompts_per_step * cfg.train.samples_per_prompt
    traces = cfg.traces_per_step
    budget = cfg.rollout.max_new_tokens
    eval_problems = cfg.train.eval_max_problems or cfg.task.eval_size
    return Tokens(
        first_attempts=first_attempts,
        traces=traces,
        generated=(first_attempts + traces) * budget,
        trained=traces * 2 * budget,
        forward=traces * cfg.model.max_model_len,
        micro_batches_per_rank=traces // cfg.learner.world_size // cfg.learner.micro_batch_size,
        steps=cfg.train.stage1_steps + cfg.train.stage2_steps,
        eval_generated=eval_problems * 2 * cfg.rollout.max_new_tokens,
    )


# -- The plan ------------------------------------------------------------------------------


@dataclass
class Plan:
    cfg: Config
    facts: ModelFacts
    node_types: list[NodeType]
    demands: list[RoleDemand]
    transport: str
    estimates: list[Estimate]
    tokens: Tokens
    problems: list[str] = field(default_factory=list)


def make_plan(cfg: Config, node_types: list[NodeType], facts: ModelFacts) -> Plan:
    """Check and size `cfg` on `node_types`: `problems` empty means it fits."""
    demands = layout(cfg)
    # The check a run makes against the live cluster (placement.check_fits), on every node
    # the cluster file allows.
    problems = gpu_layout_problems(cfg)  # GPU shares NCCL rejects (placement.reserve checks too)
    problems += layout_problems(demands, [node for t in node_types for node in t.nodes()])
    rollout_gpu = gpu_memory_for(role_bundle(demands, "rollout"), node_types)
    estimates = [
        rollout_estimate(cfg, facts, rollout_gpu),
        learner_estimate(cfg, facts),
        verifier_estimate(cfg),
    ]
    plan = Plan(
        cfg,
        facts,
        node_types,
        demands,
        choose_transport(cfg),
        estimates,
        tokens_per_step(cfg),
        problems,
    )
    plan.problems += memory_problems(plan)
    return plan


def role_bundle(demands: list[RoleDemand], role: str) -> dict[str, float]:
    """One actor's resources of `role` (a colocated rollout+learner bundle counts for both)."""
    return next(d.bundle for d in demands if role in d.role.split("+"))


def fitting_types(bundle: dict[str, float], node_types: list[NodeType]) -> list[NodeType]:
    return [t for t in node_types if t.count and fits(bundle, t.resources)]


def gpu_memory_for(bundle: dict[str, float], node_types: list[NodeType]) -> float | None:
    """The smallest GPU (GiB) among the node types an actor with `bundle` can land on."""
    known = [t.gpu_memory_gib for t in fitting_types(bundle, node_types) if t.gpu_memory_gib]
    return min(known) if known else None


def memory_problems(plan: Plan) -> list[str]:
    """Lower bounds that already exceed what the node types offer, naming the keys to change."""
    cfg, problems = plan.cfg, []
    rollout, learner, _ = plan.estimates
    gpu = gpu_memory_for(role_bundle(plan.demands, "learner"), plan.node_types)
    if learner.device == "GPU" and gpu is not None:
        colocated = rollout.reserved if cfg.rollout.colocate_with_learner else 0.0
        if learner.total + colocated > gpu * GIB:
            shared = (
                f" + vLLM's {cfg.rollout.gpu_memory_utilization:g} of the GPU it shares"
                if colocated
                else ""
            )
            problems.append(
                f"GPU memory: a learner rank needs at least {learner.total / GIB:.1f} GiB"
                f"{shared}, a GPU has {gpu:g} GiB; raise learner.zero_stage or "
                "learner.world_size, lower learner.micro_batch_size"
                + (" or rollout.gpu_memory_utilization" if colocated else "")
            )
    weights = rollout.parts["weights"]
    if rollout.device == "GPU" and rollout.reserved and weights >= rollout.reserved:
        problems.append(
            f"GPU memory: the rollout's weights ({weights / GIB:.1f} GiB per GPU) do not fit in "
            f"rollout.gpu_memory_utilization ({cfg.rollout.gpu_memory_utilization:g}); raise it "
            "or rollout.tensor_parallel_size"
        )
    if rollout.kv_tokens is not None and rollout.kv_tokens < cfg.model.max_model_len:
        problems.append(
            f"KV cache: room for {rollout.kv_tokens:,} tokens, less than one "
            f"sequence of model.max_model_len={cfg.model.max_model_len} (vLLM refuses to start); "
            "raise rollout.gpu_memory_utilization (GPU) or rollout.kv_cache_gib (CPU)"
        )
    problems += ram_problems(plan)
    return problems


def ram_problems(plan: Plan) -> list[str]:
    """On one node (this machine), every CPU actor's memory must fit in its RAM at once."""
    if len(plan.node_types) != 1 or plan.node_types[0].memory_gib is None:
        return []
    counts = {d.role: d.count for d in plan.demands}
    counts.setdefault("rollout", counts.get("rollout+learner", 0))
    counts.setdefault("learner", counts.get("rollout+learner", 0))
    need = sum(e.total * counts[e.role] for e in plan.estimates if e.device == "CPU")
    ram = plan.node_types[0].memory_gib
    if need <= ram * GIB:
        return []
    return [
        f"RAM: the CPU actors need at least {need / GIB:.1f} GiB together, this machine has "
        f"{ram:.1f} GiB; lower rollout.num_workers, learner.world_size or rollout.kv_cache_gib"
    ]


# -- Output --------------------------------------------------------------------------------


def format_plan(plan: Plan, target: str, notes: list[str]) -> str:
    cfg, facts, tokens = plan.cfg, plan.facts, plan.tokens
    lines = [
        f"model     {cfg.model.path}: {facts.model_type}, {facts.parameters:,} parameters "
        f"(from {facts.source})",
        f"nodes     {target}:",
    ]
    for t in plan.node_types:
        extra = ", ".join(
            x
            for x in (
                t.machine,
                f"{t.memory_gib:g} GiB RAM" if t.memory_gib else "",
                f"{t.gpu_model or 'GPU'} {t.gpu_memory_gib:g} GiB" if t.gpu_memory_gib else "",
            )
            if x
        )
        lines.append(f"            {t.count} x {_resources(t.resources):<24} {t.name}  {extra}")
    lines += [f"            note: {note}" for note in notes]
    lines.append("layout    one placement group per role (PACK):")
    for d in plan.demands:
        lines.append(f"            {d.role:<16} {d.count} x {_resources(d.bundle)}")
    lines.append(f"          needs {_resources(totals(plan.demands))} in all")
    lines.append(f"sync      {plan.transport} ({_transport_detail(cfg, plan.transport)})")
    lines.append("memory    per actor, lower bounds (see `score_ray/plan.py`):")
    for e in plan.estimates:
        parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in e.parts.items())
        total = f"{e.total / GIB:6.2f} GiB on {e.device:<3}"
        lines.append(f"            {e.role:<9} {total}  {parts}  ({e.note})")
    lines += gpu_budget(plan)
    lines += [
        f"tokens    per step: {tokens.traces} traces = {cfg.train.prompts_per_step} prompts x "
        f"{cfg.train.samples_per_prompt} samples x {cfg.rollout.attempt2_samples} second "
        "attempts each",
        f"            generated <= {tokens.generated:,} ({tokens.first_attempts} first + "
        f"{tokens.traces} second attempts x {cfg.rollout.max_new_tokens} new tokens)",
        f"            trained   <= {tokens.trained:,} attempt tokens; learner forward <= "
        f"{tokens.forward:,} tokens (policy, and as many for the reference), "
        f"{tokens.micro_batches_per_rank} micro-batches of {cfg.learner.micro_batch_size} per rank",
        f"          per run: {tokens.steps} steps -> generated <= "
        f"{tokens.generated * tokens.steps:,}; each evaluation <= {tokens.eval_generated:,}",
    ]
    return "\n".join(lines)


def gpu_budget(plan: Plan) -> list[str]:
    """What each GPU holds against its memory: one role's, or both when colocated."""
    rollout, learner, _ = plan.estimates
    gpu = gpu_memory_for(role_bundle(plan.demands, "learner"), plan.node_types)
    of = f"of {gpu:g} GiB" if gpu else "(GPU memory unknown: --gpu-memory-gib)"
    if plan.cfg.rollout.colocate_with_learner:
        both = learner.total + rollout.total
        return [
            f"            one GPU: learner {learner.total / GIB:.2f} + rollout "
            f"{rollout.total / GIB:.2f} = {both / GIB:.2f} GiB {of}"
        ]
    return [
        f"            one GPU: {e.role} {e.total / GIB:.2f} GiB {of}"
        for e in (rollout, learner)
        if e.device == "GPU"
    ]


def _transport_detail(cfg: Config, transport: str) -> str:
    ranks = cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size
    return {
        "object_store": "learner rank 0 -> Ray object store -> every rollout worker",
        "nccl": f"learner rank 0 broadcasts to {ranks} vLLM workers, one NCCL group",
        "cuda_ipc": "each learner rank shares its GPU copy with the vLLM engine beside it",
    }[transport]


def _resources(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"
