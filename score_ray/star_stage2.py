"""The paper's Table 4 row "STaR in Stage II" (`train.stage2_method=star`).

`score-ray train` runs Stage I as usual; the trainer writes the Stage I policy to
OUTPUT_DIR/stage1 instead of final/. Then, in place of Stage II's RL:

    OUTPUT_DIR/stage2_star/   `score-ray sft --method star` from OUTPUT_DIR/stage1, with the
                              run's own config (sft.rounds, sft.lr, ...): each round samples
                              two-attempt traces from the current model on RL's actors, keeps
                              the successful revisions (attempt 1 wrong, attempt 2 right) and
                              trains on their attempt-2 tokens on Ray Train
    OUTPUT_DIR/final/         the last STaR round's model; the Stage I policy when no round
                              kept enough revisions to train on (the report says so)
    OUTPUT_DIR/stage2.json    which method ran and, per round, how many revisions it kept

`score-ray eval model.path=OUTPUT_DIR` evaluates final/ and copies stage2.json into eval.json
("stage2"), so every number of a STaR-in-Stage-II run names its method.

A killed run is continued with `score-ray train --resume OUTPUT_DIR`: Stage I resumes from its
checkpoints (or, finished, is only evaluated and written again), and the STaR rounds resume as
`score-ray sft --resume` does (finished rounds skipped, a round's examples read back).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from score_ray.checkpoint import FINAL, STAGE1_POLICY
from score_ray.config import Config
from score_ray.tasks.base import Problem

log = logging.getLogger("score_ray")

STAR_DIR = "stage2_star"
STAGE2_JSON = "stage2.json"
RL_STAGE2 = {"stage2_method": "rl"}
"""What eval.json says of a run without stage2.json: SCoRe's own Stage II."""


def run_star_stage2(cfg: Config, train: list[Problem]) -> dict[str, Any]:
    """STaR rounds from OUTPUT_DIR/stage1 on the training problems; publishes final/ and
    writes stage2.json. Ray must be up, with CPUs for the Ray Train workers
    (`score_ray.sft.cli.init_sft_ray`), and the trainer's actors gone."""
    from score_ray.sft.run import publish_folder, run_sft

    out = Path(cfg.output_dir)
    stage1 = out / STAGE1_POLICY
    star_cfg = dataclasses.replace(cfg, output_dir=str(out / STAR_DIR))
    summary = run_sft(star_cfg, str(stage1), train)
    trained = summary["final"] is not None
    publish_folder(Path(summary["final"]) if trained else stage1, out / FINAL)
    report = stage2_report(summary, STAR_DIR if trained else STAGE1_POLICY)
    (out / STAGE2_JSON).write_text(json.dumps(report, indent=2) + "\n")
    log.info("stage II (star): %s", report["note"])
    return report


def stage2_report(summary: dict[str, Any], final_from: str) -> dict[str, Any]:
    """stage2.json from the STaR run's sft_summary.json: the method, where final/ came from,
    and per round the traces sampled, the revisions kept and whether it trained."""
    rounds = [
        {
            "round": r["round"],
            "samples": r["samples"],
            "fixes": r["fixes"],
            "breaks": r["breaks"],
            "kept": r["kept"],
            "min_examples": r["min_examples"],
            "trained": r["trained"],
            "steps": r.get("steps", 0),
            "note": r.get("note"),
        }
        for r in summary["rounds"]
    ]
    trained = sum(r["trained"] for r in rounds)
    kept = ", ".join(str(r["kept"]) for r in rounds)
    rounds_kept = f"STaR in Stage II kept {kept} successful revisions in {len(rounds)} round(s)"
    if trained:
        note = f"{rounds_kept}; {trained} trained; final/ is the last trained round's model"
    else:
        note = (
            f"{rounds_kept}, too few to train on (sft.min_examples={rounds[0]['min_examples']}); "
            "no round trained, so final/ is the Stage I policy"
        )
    return {
        "stage2_method": "star",
        "rounds": rounds,
        "rounds_trained": trained,
        "final_from": final_from,
        "note": note,
    }


def read_stage2(run_dir: str | Path) -> dict[str, Any] | None:
    """A finished `score-ray train` run's Stage II method and report, for eval.json:
    stage2.json if the run wrote one (star), else SCoRe's RL Stage II; None for a folder that
    is no training run (a `score-ray sft` run has no metrics.jsonl)."""
    run = Path(run_dir)
    if (run / STAGE2_JSON).is_file():
        return json.loads((run / STAGE2_JSON).read_text())
    return dict(RL_STAGE2) if (run / "metrics.jsonl").is_file() else None
