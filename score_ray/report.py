"""The before/after report of a SCoRe run: `report.md` plus PNG plots.

Inputs are files other commands already wrote, so a report can be rebuilt at any time:

    BASE_EVAL/eval.json      `score-ray eval` of the base model
    TRAINED_EVAL/eval.json   `score-ray eval` of the trained model
    RUN/metrics.jsonl        the trainer's per-step records and in-training evaluations

The change column (trained - base) is computed over the problems both evaluations share,
matched by uid, with a paired bootstrap CI; the report says loudly when the two
evaluations used different problems (docs/evaluation_statistics.md).

Outputs (in the report folder):

    report.md                    tables and plots, readable on GitHub
    accuracy_per_attempt.png     Acc@t1, Acc@t2 (...) base vs trained, with 95% CIs
    reward_per_attempt.png       training reward of attempt 1 and 2 per step, both stages

`score-ray eval` itself draws, beside its eval.json (`plot_turns`, `plot_budget`):

    accuracy_per_turn.png        Acc@tk against k, with 95% CIs
    accuracy_vs_budget.png       majority vote and pass@b against the sample budget, for
                                 parallel and sequential sampling, with 95% CIs
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from score_ray.evaluate import (
    BOOTSTRAP,
    CLOPPER_PEARSON,
    change_summary,
    format_p,
    mcnemar_exact,
    transpose,
)
from score_ray.scaling import PARALLEL, SEQUENTIAL, curve

ACCURACY_PNG = "accuracy_per_attempt.png"
REWARD_PNG = "reward_per_attempt.png"
REPORT_MD = "report.md"
TURNS_PNG = "accuracy_per_turn.png"
BUDGET_PNG = "accuracy_vs_budget.png"
PROBLEMS_JSONL = "eval_problems.jsonl"
"""Written beside eval.json by `score-ray eval`; the per-problem rewards of older evals."""
MCNEMAR_LABEL = "McNemar p of Delta (i->c, c->i)"

ProblemRewards = dict[str, tuple[float, ...]]
"""uid -> the reward of each attempt on that problem."""

METRIC_LABELS = {
    "acc_t1": "Acc@t1",
    "acc_t2": "Acc@t2",
    "delta": "Delta(t1,t2)",
    "delta_i2c": "Delta i->c",
    "delta_c2i": "Delta c->i",
}


def date_and_machine() -> dict[str, str]:
    """When and where a benchmark record was measured: UTC date-time and this machine."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
    }


def read_eval(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no eval.json (run `score-ray eval` first)")
    return json.loads(path.read_text())


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-step records, in-training evaluation records) from a trainer's metrics.jsonl."""
    steps, evals = [], []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        (evals if "eval" in record else steps).append(record)
    return steps, evals


def metric_names(report: dict[str, Any]) -> list[str]:
    """The metrics of an eval.json in display order: attempts first, then the deltas."""
    names = report["metrics"]
    return [n for n in names if n.startswith("acc_")] + [
        n for n in names if not n.startswith("acc_")
    ]


def problem_rewards(report: dict[str, Any], folder: str | Path) -> ProblemRewards | None:
    """The per-problem rewards of one evaluation: eval.json's "problems", or for an eval.json
    written before that field, eval_problems.jsonl beside it; None when neither exists."""
    if "problems" in report:
        uids = report["problems"]["uids"]
        columns = transpose(report["problems"]["rewards"])
    else:
        path = Path(folder) / PROBLEMS_JSONL
        if not path.is_file():
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        uids = [row["uid"] for row in rows]
        columns = [tuple(a["reward"] for a in row["attempts"]) for row in rows]
    by_uid = dict(zip(uids, columns, strict=True))
    if len(by_uid) != len(uids):
        # Pairing by uid would silently drop a problem; uids are content hashes, so this
        # means a damaged file rather than a repeated question.
        raise ValueError(f"{folder}: {len(uids) - len(by_uid)} repeated problem uids")
    return by_uid


@dataclass
class PairedChange:
    """The change column's statistics and the sentence the report prints about them."""

    change: dict[str, dict[str, Any]] | None
    """`change_summary` over the shared problems; None when it cannot be computed."""
    note: str
    warning: bool
    """The evaluations cannot be compared problem by problem as they stand."""


def paired_change(base: ProblemRewards | None, trained: ProblemRewards | None) -> PairedChange:
    """trained - base over the problems (uids) both evaluations share, with a paired
    bootstrap CI, and a note that names any mismatch between the two problem sets."""
    if base is None or trained is None:
        which = " and ".join(
            name for name, rewards in (("base", base), ("trained", trained)) if rewards is None
        )
        note = (
            f"The change column has no CI: the {which} evaluation records no per-problem "
            f'rewards (an eval.json without "problems" and no {PROBLEMS_JSONL} beside it).'
        )
        return PairedChange(None, note, warning=True)
    shared = sorted(set(base) & set(trained))  # sorted: the bootstrap's draws are reproducible
    if not shared:
        note = (
            f"Warning: the base ({len(base)}) and trained ({len(trained)}) evaluations share "
            "no problem; the change column compares different problems and has no CI."
        )
        return PairedChange(None, note, warning=True)
    change = change_summary(
        transpose([base[uid] for uid in shared]), transpose([trained[uid] for uid in shared])
    )
    if len(shared) == len(base) == len(trained):
        note = (
            f"Change: trained - base on the same {len(shared)} problems; its 95% CI is a "
            "paired bootstrap over problems (each problem's base and trained rewards are "
            "resampled together)."
        )
        return PairedChange(change, note, warning=False)
    note = (
        f"Warning: the base and trained evaluations used different problems: {len(base)} "
        f"base, {len(trained)} trained, {len(shared)} shared ({len(base) - len(shared)} only "
        f"in base, {len(trained) - len(shared)} only in trained). The change column and its "
        f"CI are computed over the {len(shared)} shared problems only; the base and trained "
        "columns each over all of their own."
    )
    return PairedChange(change, note, warning=True)


def comparison_rows(
    base: dict[str, Any], trained: dict[str, Any], change: dict[str, dict[str, Any]] | None = None
) -> list[list[str]]:
    """One row per metric: name, base [CI], trained [CI], change (trained - base) [CI], and
    a last row with McNemar's test of each Delta. Without `change` (no paired rewards) the
    change is the difference of the two values, with no CI."""
    rows = []
    for name in metric_names(trained):
        if name not in base:
            continue
        b, t = base[name], trained[name]
        signed = name.startswith("delta")
        if change is not None and name in change:
            moved = with_ci(change[name], signed=True)
        else:
            moved = f"{t['value'] - b['value']:+.3f} [CI n/a]"
        rows.append([METRIC_LABELS.get(name, name), with_ci(b, signed), with_ci(t, signed), moved])
    rows.append([MCNEMAR_LABEL, mcnemar_cell(base), mcnemar_cell(trained), ""])
    return rows


def mcnemar_cell(report: dict[str, Any]) -> str:
    """ "p (i->c, c->i)" for one evaluation. An eval.json from before the test was recorded
    has the two shares and n, which give the counts back."""
    delta = report.get("delta", {})
    if "mcnemar_p" in delta:
        p, b, c = delta["mcnemar_p"], delta["i2c"], delta["c2i"]
    elif "delta_i2c" in report and "delta_c2i" in report:
        b = round(report["delta_i2c"]["value"] * report["n"])
        c = round(report["delta_c2i"]["value"] * report["n"])
        p = mcnemar_exact(b, c)
    else:
        return "n/a"
    return f"{format_p(p)} ({b}, {c})"


def interval_sentence(base: dict[str, Any], trained: dict[str, Any]) -> str:
    """Which method made which interval, naming an evaluation that predates the exact ones."""
    older = [
        name
        for name, report in (("base", base), ("trained", trained))
        if report.get("delta_i2c", {}).get("method", BOOTSTRAP) != CLOPPER_PEARSON
    ]
    sentence = (
        f"95% CIs: accuracies, Delta and the change from a {BOOTSTRAP} over problems "
        f"({trained['bootstrap']['resamples']} resamples); i->c and c->i exact "
        "(Clopper-Pearson). McNemar p: exact two-sided test of Delta(t1,t2) = 0 on the "
        "problems whose two attempts disagree."
    )
    if older:
        sentence += (
            f" The {' and '.join(older)} eval.json predates exact intervals: its i->c and "
            "c->i CIs are bootstrap ones, which are [0, 0] for a zero count."
        )
    return sentence


def with_ci(entry: dict[str, Any], signed: bool) -> str:
    sign = "+" if signed else ""
    low, high = entry["ci"]
    return f"{entry['value']:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """The same table, aligned for a terminal."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row) for row in [header, *rows])


COMPARISON_HEADER = ["metric", "base [95% CI]", "trained [95% CI]", "change [95% CI]"]
STAGE_HEADER = ["stage", "steps", "attempt-1 reward", "attempt-2 reward", "s/step"]


def plot_accuracy(base: dict[str, Any], trained: dict[str, Any], out: Path) -> None:
    """Grouped bars: accuracy at each attempt, base vs trained, with 95% CI whiskers."""
    plt = _pyplot()
    attempts = [n for n in metric_names(trained) if n.startswith("acc_") and n in base]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    sides = (("base", base, -width / 2), ("trained", trained, width / 2))
    for label, report, offset in sides:
        values = [report[n]["value"] for n in attempts]
        errors = [
            [v - report[n]["ci"][0] for n, v in zip(attempts, values, strict=True)],
            [report[n]["ci"][1] - v for n, v in zip(attempts, values, strict=True)],
        ]
        positions = [i + offset for i in range(len(attempts))]
        bars = ax.bar(positions, values, width, yerr=errors, capsize=4, label=label)
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    ax.set_xticks(range(len(attempts)), [f"attempt {n.removeprefix('acc_t')}" for n in attempts])
    ax.set_ylabel(f"greedy accuracy (n = {trained['n']})")
    ax.set_title("Accuracy per attempt on the held-out split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_rewards(steps: list[dict[str, Any]], evals: list[dict[str, Any]], out: Path) -> None:
    """Training reward (verifier correctness) of each attempt per step, Stage I/II shaded,
    plus the in-training held-out evaluations when there are any."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["step"] for r in steps]
    for stage, color in ((1, "#e8eef8"), (2, "#f8efe6")):
        in_stage = [r["step"] for r in steps if r["stage"] == stage]
        if in_stage:
            ax.axvspan(min(in_stage) - 0.5, max(in_stage) + 0.5, color=color, zorder=0)
            ax.text(
                (min(in_stage) + max(in_stage)) / 2,
                1.01,
                f"Stage {'I' * stage}",
                ha="center",
                va="bottom",
                transform=ax.get_xaxis_transform(),
                fontsize=9,
            )
    ax.plot(x, [r["acc/t1"] for r in steps], "-o", ms=3, label="attempt 1 (train samples)")
    ax.plot(x, [r["acc/t2"] for r in steps], "-o", ms=3, label="attempt 2 (train samples)")
    if evals:
        ex = [r["step"] for r in evals]
        for attempt in (1, 2):
            values = [r[f"eval/acc_t{attempt}"] for r in evals]
            ax.plot(ex, values, "s--", ms=5, label=f"attempt {attempt} (held-out, greedy)")
    ax.set_xlabel("training step")
    ax.set_ylabel("reward (fraction correct)")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_turns(report: dict[str, Any], out: Path) -> None:
    """Greedy Acc@tk against the attempt k of one evaluation, with 95% CI whiskers."""
    plt = _pyplot()
    turns = [n for n in metric_names(report) if n.startswith("acc_t")]
    ks = [int(n.removeprefix("acc_t")) for n in turns]
    values = [report[n]["value"] for n in turns]
    errors = ci_errors([report[n] for n in turns])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(ks, values, yerr=errors, fmt="-o", capsize=4)
    for k, value in zip(ks, values, strict=True):
        ax.annotate(f"{value:.3f}", (k, value), textcoords="offset points", xytext=(6, 4))
    ax.set_xticks(ks)
    ax.set_xlabel("attempt k (k >= 2: after the correction instruction)")
    ax.set_ylabel(f"greedy Acc@tk (n = {report['n']})")
    ax.set_title("Accuracy per turn, 95% CI")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_budget(report: dict[str, Any], out: Path) -> None:
    """Majority-vote accuracy (solid, CI whiskers) and pass@b (dashed) against the sample budget
    b for each scheme in eval.json's "scaling", and the greedy Acc@t1 for reference."""
    plt = _pyplot()
    scaling = report["scaling"]
    curves = scaling["curves"]
    fig, ax = plt.subplots(figsize=(8.5, 4))
    # Sequential points sit a little right of the parallel ones, so overlapping CIs stay legible.
    styles = {
        PARALLEL: ("C0", "parallel (b samples)", 1.0),
        SEQUENTIAL: ("C1", "sequential (b/2 x 2)", 1.04),
    }
    for scheme, (color, label, shift) in styles.items():
        majority = curve(curves, scheme, "majority")
        if not majority:
            continue
        budgets = [b * shift for b, _ in majority]
        values = [e["value"] for _, e in majority]
        ax.errorbar(
            budgets,
            values,
            yerr=ci_errors([e for _, e in majority]),
            fmt="-o",
            color=color,
            capsize=3,
            label=f"{label}: majority vote",
        )
        passes = curve(curves, scheme, "pass")
        ax.plot(
            [b * shift for b, _ in passes],
            [e["value"] for _, e in passes],
            "--",
            color=color,
            alpha=0.6,
            label=f"{label}: pass@b",
        )
    if "acc_t1" in report:
        ax.axhline(report["acc_t1"]["value"], color="gray", ls=":", label="greedy Acc@t1")
    ax.set_xscale("log", base=2)
    ax.set_xticks(scaling["budgets"], [str(b) for b in scaling["budgets"]])
    ax.set_xlabel("samples per problem (budget b)")
    ax.set_ylabel(f"accuracy (n = {report['n']})")
    ax.set_title(f"Inference-time scaling, T = {scaling['temperature']}, 95% CI")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the data
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def ci_errors(entries: list[dict[str, Any]]) -> list[list[float]]:
    """matplotlib's yerr (below, above) from eval.json entries' values and CIs."""
    return [
        [max(0.0, e["value"] - e["ci"][0]) for e in entries],
        [max(0.0, e["ci"][1] - e["value"]) for e in entries],
    ]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def write_report(
    out_dir: str | Path,
    base_eval: str | Path,
    trained_eval: str | Path,
    metrics_jsonl: str | Path,
    run_facts: dict[str, str] | None = None,
) -> str:
    """Write report.md and the plots into `out_dir`; return the terminal before/after table
    and the note on how the two evaluations were paired."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base, trained = read_eval(base_eval), read_eval(trained_eval)
    steps, evals = read_metrics(metrics_jsonl)
    plot_accuracy(base, trained, out / ACCURACY_PNG)
    plot_rewards(steps, evals, out / REWARD_PNG)
    paired = paired_change(problem_rewards(base, base_eval), problem_rewards(trained, trained_eval))
    rows = comparison_rows(base, trained, paired.change)
    stage_rows = _stage_rows(steps)
    config = trained.get("config", {})
    lines = [
        "# SCoRe report",
        "",
        f"Model: `{base['model_path']}` (base) -> `{trained['model_path']}` (trained).  ",
        f"Held-out problems: {trained['n']}, greedy decoding, {trained['attempts']} attempts.  ",
        interval_sentence(base, trained),
        "",
        "## Before and after",
        "",
        markdown_table(COMPARISON_HEADER, rows),
        "",
        f"**{paired.note}**" if paired.warning else paired.note,
        "",
        "Delta(t1,t2) = Acc@t2 - Acc@t1; i->c: wrong at attempt 1, right at attempt 2; "
        "c->i: the reverse.",
        "",
        f"![accuracy per attempt]({ACCURACY_PNG})",
        "",
        "## Training",
        "",
        markdown_table(STAGE_HEADER, stage_rows),
        "",
        "Rewards are the verifier's correctness on the sampled training traces (temperature "
        f"{config.get('rollout', {}).get('temperature', '?')}), averaged over each stage.",
        "",
        f"![reward per attempt]({REWARD_PNG})",
        *star_stage2_lines(trained.get("stage2")),
    ]
    if run_facts:
        facts = [[key, value] for key, value in run_facts.items()]
        lines += ["", "## Run", "", markdown_table(["", ""], facts)]
    task = config.get("task", {})
    algo = config.get("algo", {})
    train = config.get("train", {})
    lines += [
        "",
        "## Setup",
        "",
        f"- task: {task.get('source')} / {task.get('name')} {json.dumps(task.get('params', {}))}",
        f"- Stage I steps {train.get('stage1_steps')}, Stage II steps "
        f"{train.get('stage2_steps')}, {train.get('prompts_per_step')} prompts x "
        f"{train.get('samples_per_prompt')} samples per step",
        f"- alpha {algo.get('alpha')}, beta1 {algo.get('beta1')}, beta2 {algo.get('beta2')}, "
        f"lr {config.get('learner', {}).get('lr')}",
        "",
    ]
    (out / REPORT_MD).write_text("\n".join(lines))
    return text_table(COMPARISON_HEADER, rows) + "\n" + paired.note


STAR_HEADER = ["round", "traces", "fixes", "breaks", "kept", "trained", "steps"]


def star_stage2_lines(stage2: dict[str, Any] | None) -> list[str]:
    """report.md's account of a "STaR in Stage II" run (eval.json's "stage2"): each round's
    successful revisions, and plainly whether any round had enough to train on."""
    if not stage2 or stage2.get("stage2_method") != "star":
        return []
    rows = [
        [str(r[k]) for k in ("round", "samples", "fixes", "breaks", "kept")]
        + ["yes" if r["trained"] else "no (too few)", str(r["steps"])]
        for r in stage2["rounds"]
    ]
    return [
        "",
        '## Stage II: STaR (paper Table 4, "STaR in Stage II")',
        "",
        "Stage II's RL is replaced by STaR rounds from the Stage I policy: sample two-attempt "
        "traces, keep the successful revisions (attempt 1 wrong, attempt 2 right), fine-tune "
        "on their attempt-2 tokens.",
        "",
        markdown_table(STAR_HEADER, rows),
        "",
        f"**{stage2['note']}**",
    ]


def _stage_rows(steps: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for stage in (1, 2):
        records = [r for r in steps if r["stage"] == stage]
        if not records:
            continue
        means = {
            key: sum(r[key] for r in records) / len(records)
            for key in ("acc/t1", "acc/t2", "time/step")
        }
        rows.append(
            [
                "I" * stage,
                str(len(records)),
                f"{means['acc/t1']:.3f}",
                f"{means['acc/t2']:.3f}",
                f"{means['time/step']:.1f}",
            ]
        )
    return rows
