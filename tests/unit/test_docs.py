"""The README and docs/ against the code: every command they show parses with the real
command line and names real config keys and files, every `make` target exists, every link
and anchor resolves, every repository path they name exists. Nothing is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from score_ray.cli import build_parser
from score_ray.config import Config
from score_ray.metrics import flatten, resolved_config

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250
# Pages written on other branches at the same time (issue 17); they exist once merged.
PAGES_FROM_OTHER_BRANCHES: set[str] = set()  # pages an unmerged branch will add
REPO_PATH = re.compile(r"^(?:conf|cluster|benchmarks|score_ray|tests|docs)/[\w./-]*$")
# Config keys whose values are free-form mappings: any key below them is the user's.
MAPPING_KEYS = ("task.params", "rollout.resources", "learner.resources")


def page_id(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def shell_blocks(text: str) -> list[str]:
    """The page's ```bash blocks (diagrams and tables sit in untagged ones)."""
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M)


def code(text: str) -> str:
    """Inline code spans and shell lines (comments dropped): where a page shows commands."""
    lines = [line for block in shell_blocks(text) for line in shell_lines(block)]
    return "\n".join([*re.findall(r"`([^`\n]+)`", prose(text)), *lines])


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```[\w-]*\n.*?^```", "", text, flags=re.S | re.M)


def shell_lines(block: str) -> list[str]:
    """Command lines of a shell block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip()]


def score_ray_commands(text: str) -> list[list[str]]:
    """The argv after `score-ray` of every command in the page's code blocks."""
    commands = []
    for block in shell_blocks(text):
        for line in shell_lines(block):
            if "score-ray" not in line:
                continue
            words = shlex.split(line)
            for i, word in enumerate(words):
                if word.endswith("score-ray") and not word.startswith("http"):
                    argv = words[i + 1 :]
                    stop = [j for j, w in enumerate(argv) if w in ("&&", "|", ";", "&")]
                    commands.append(argv[: stop[0]] if stop else argv)
    return commands


def schema_keys() -> set[str]:
    return set(flatten(resolved_config(Config())))


def override_problem(word: str, keys: set[str]) -> str | None:
    key = word.split("=", 1)[0]
    if key in keys or any(key.startswith(f"{m}.") for m in MAPPING_KEYS):
        return None
    return f"unknown config key {key!r}"


def command_problems(argv: list[str], keys: set[str]) -> list[str]:
    """What is wrong with one documented `score-ray` command, without running it."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        return [f"`score-ray {' '.join(argv)}` does not parse"]
    problems = []
    for config in getattr(args, "config", None) or []:
        if not (REPO / config).is_file():
            problems.append(f"--config {config} does not exist")
    for word in getattr(args, "overrides", None) or []:
        problem = override_problem(word, keys) if "=" in word else f"{word!r} is not key=value"
        if problem:
            problems.append(problem)
    return problems


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", prose(path.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_documented_commands_parse_with_real_keys_and_files(page):
    keys = schema_keys()
    commands = score_ray_commands(page.read_text())
    problems = [p for argv in commands for p in command_problems(argv, keys)]
    assert not problems, f"{page_id(page)}: {problems}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_inline_commands_and_make_targets_exist(page):
    shown = code(page.read_text())
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    named = set(re.findall(r"score-ray ([a-z][\w-]*)", shown))
    assert named <= subcommands, f"{page_id(page)}: unknown commands {named - subcommands}"
    targets = set(re.findall(r"\bmake ([a-z][\w-]*)", shown))
    assert targets <= make_targets(), f"{page_id(page)}: unknown targets {targets - make_targets()}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_and_anchors_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        name = linked.relative_to(REPO).as_posix() if linked.is_relative_to(REPO) else str(linked)
        if name in PAGES_FROM_OTHER_BRANCHES and not linked.exists():
            continue
        if not linked.exists():
            broken.append(target)
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{page_id(page)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_repository_paths_named_in_the_text_exist(page):
    spans = re.findall(r"`([^`\n]+)`", prose(page.read_text()))
    paths = {s.rstrip(".,:") for s in spans if REPO_PATH.match(s) and "<" not in s}
    missing = sorted(p for p in paths if not (REPO / p).exists())
    missing = [p for p in missing if p not in PAGES_FROM_OTHER_BRANCHES]
    assert not missing, f"{page_id(page)}: {missing}"


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", readme))
    pages = {page_id(p) for p in PAGES if p.parent.name == "docs" and p.name != "README.md"}
    assert pages | PAGES_FROM_OTHER_BRANCHES <= linked, "every docs/ page is linked from README"


def test_the_checks_catch_drift():
    keys = schema_keys()
    assert command_problems(["train", "--config", "conf/nope.yaml"], keys)
    assert command_problems(["train", "learner.lrr=1"], keys) == [
        "unknown config key 'learner.lrr'"
    ]
    assert command_problems(["trian"], keys)
    assert command_problems(["plan", "--cluster", "x", "task.params.min_terms=2"], keys) == []
    assert score_ray_commands(
        "```bash\nray job submit -- \\\n  score-ray eval --attempts 3\n```\n"
    ) == [["eval", "--attempts", "3"]]
    assert "score-ray-plan-a-dry-run" in anchors(REPO / "docs" / "cluster.md")
