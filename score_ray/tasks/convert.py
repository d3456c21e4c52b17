"""Turn public MATH and MBPP downloads into the jsonl rows score-ray's task sources read.

    python -m score_ray.tasks.convert math --input prm800k/math_splits/train.jsonl \\
        --output data/math/train.jsonl
    python -m score_ray.tasks.convert math --input MATH/train --output data/math/train.jsonl
    python -m score_ray.tasks.convert mbpp --input mbpp.jsonl --output-dir data/mbpp

math: rows `{"problem", "answer"}` for `task.source=math_jsonl`, from any of
    - jsonl rows that already carry `answer` (PRM800K's math_splits, HuggingFaceH4/MATH-500);
    - jsonl rows or the MATH tarball's per-problem .json files (a folder, read recursively)
      that carry only `solution`: the answer is its last \\boxed{...}, extracted by the same
      code that reads the model's answers (`verify.scorers.extract_answer`), so gold and
      prediction are cut the same way.
    `level`, `type`/`subject` and `unique_id` are kept when present (for slicing results);
    rows without a problem or an answer are skipped and counted.

mbpp: MBPP's own rows (`text`, `test_list`, `test_setup_code`, ...: what `task.source=
    mbpp_jsonl` reads) split by task id as the MBPP paper does: prompt 1-10, test 11-510,
    validation 511-600, train 601-974, one file each.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from score_ray.verify.scorers import extract_answer

KEPT_FIELDS = ("level", "type", "subject", "unique_id")
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
"""MBPP's task-id ranges, as its release README (google-research/mbpp) specifies them."""


def read_rows(source: Path) -> Iterator[dict[str, Any]]:
    """JSON objects from a .jsonl file, a .json file, or every .json/.jsonl under a folder."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix in (".json", ".jsonl") and path.is_file():
                yield from read_rows(path)
        return
    if not source.is_file():
        raise FileNotFoundError(f"--input: not found: {source}")
    if source.suffix == ".json":
        row = json.loads(source.read_text())
        if isinstance(row, dict):
            yield row
        return
    for line in source.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if isinstance(row, dict):
                yield row


def math_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """One math_jsonl row, or None without a problem or a findable answer."""
    problem = row.get("problem")
    answer = row.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        solution = row.get("solution")
        answer = extract_answer(solution, "boxed") if isinstance(solution, str) else None
    if not isinstance(problem, str) or not problem.strip() or not answer:
        return None
    kept = {key: row[key] for key in KEPT_FIELDS if key in row}
    return {"problem": problem, "answer": answer.strip(), **kept}


def convert_math(sources: list[Path], output: Path) -> tuple[int, int]:
    """Write math_jsonl rows to `output`; returns (written, skipped)."""
    written = skipped = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as out:
        for source in sources:
            for row in read_rows(source):
                converted = math_row(row)
                if converted is None:
                    skipped += 1
                    continue
                out.write(json.dumps(converted) + "\n")
                written += 1
    return written, skipped


def split_mbpp(source: Path, output_dir: Path) -> dict[str, int]:
    """MBPP rows into OUTPUT_DIR/{prompt,test,validation,train}.jsonl by task id."""
    splits: dict[str, list[str]] = {name: [] for name in MBPP_SPLITS}
    for row in read_rows(source):
        task_id = row.get("task_id")
        if not isinstance(task_id, int):
            raise ValueError(f"--input {source}: an MBPP row without an integer task_id: {row}")
        for name, (first, last) in MBPP_SPLITS.items():
            if first <= task_id <= last:
                splits[name].append(json.dumps(row))
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (output_dir / f"{name}.jsonl").write_text("".join(row + "\n" for row in rows))
    return {name: len(rows) for name, rows in splits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m score_ray.tasks.convert", description=__doc__)
    kinds = parser.add_subparsers(dest="kind", required=True)
    math = kinds.add_parser("math", help="MATH / MATH500 -> math_jsonl rows")
    math.add_argument("--input", nargs="+", type=Path, required=True, help="files or folders")
    math.add_argument("--output", type=Path, required=True)
    mbpp = kinds.add_parser("mbpp", help="MBPP's mbpp.jsonl -> one file per split")
    mbpp.add_argument("--input", type=Path, required=True)
    mbpp.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.kind == "math":
        written, skipped = convert_math(args.input, args.output)
        print(f"{args.output}: {written} rows ({skipped} without a problem or answer skipped)")
        return 0 if written else 1
    counts = split_mbpp(args.input, args.output_dir)
    print(", ".join(f"{args.output_dir / name}.jsonl: {n}" for name, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
