"""The documented commands work as typed: every `python ...` line of README.md and experiments/README.md (fenced
code blocks and inline code) and of the comment headers of experiments/*.yaml and sweeps/*.yaml is split into words
as a shell would (quotes, `\\` continuations, `&&` chains, `VAR=value` prefixes, comments), then checked in-process
the way its entry point reads it: Hydra's argument parser and override grammar, then the config composed with the
overrides (the first job of a `-m` sweep); argparse scripts through their own parser. One case per command, named
by its file, line and text, so a failure says which command rotted."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf

from imagen.cli import check_overrides, override_error

from conftest import ROOT, compose_cfg

DOCS = [ROOT / "README.md", ROOT / "experiments" / "README.md"]
HEADERS = sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "sweeps").glob("*.yaml"))
PYTHON = ("python", "python3")
NOT_OURS = {("python3", "-m", "venv"), ("python", "-m", "pytest")}  # set-up and the test suite, not entry points
SEPARATORS = {"&&", "||", ";"}
OPERATORS = "&|;()<>"  # what a shell reads as syntax outside quotes (an unquoted `(`, `<` or `|` breaks a command)
ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
OLD_REAL_DATA = "python train.py data=webdataset data.urls='/data/laion/{00000..00999}.tar' image_size=64 trainer=gpu"


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    words: tuple[str, ...]  # ("python", "train.py", override, ...), environment assignments removed
    text: str  # the command as typed (continuations joined)
    error: str = ""  # why a shell could not even split it

    @property
    def id(self) -> str:
        line = " ".join(self.text.split())
        return f"{self.where} {line[:70]}{'...' if len(line) > 70 else ''}"


def strip_comment(line: str) -> str:
    """The line without its shell comment: a `#` outside quotes that starts a word (shlex would also cut `a#b`)."""
    quote, prev, i = None, " ", 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = c
        elif c == "#" and (prev.isspace() or prev in OPERATORS):
            return line[:i]
        prev = c
        i += 1
    return line


def shell_words(text: str) -> list[str]:
    """A command line split as a POSIX shell splits it (quotes removed, operators as their own words)."""
    lex = shlex.shlex(strip_comment(text), posix=True, punctuation_chars=OPERATORS)
    lex.whitespace_split, lex.commenters = True, ""
    return list(lex)


def python_commands(text: str) -> list[list[str]]:
    """The `python ...` commands of a command line (of an `&&` / `;` chain), leading VAR=value removed; the
    set-up and test commands (NOT_OURS) left out."""
    commands, current = [], []
    for word in [*shell_words(text), ";"]:
        if word in SEPARATORS:
            while current and ENV.match(current[0]):
                current.pop(0)
            if current and current[0] in PYTHON and tuple(current[:3]) not in NOT_OURS:
                commands.append(current)
            current = []
        else:
            current.append(word)
    return commands


def joined(lines: list[str], i: int) -> tuple[str, int]:
    """Line i with its `\\` continuations (the shell drops backslash-newline), and the index of its last line."""
    text = lines[i]
    while text.rstrip().endswith("\\") and i + 1 < len(lines):
        i += 1
        text = text.rstrip()[:-1] + lines[i]
    return text, i


def markdown_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command line) for the lines of fenced code blocks and the inline code spans that run python."""
    lines, out, fenced, i = text.splitlines(), [], False, 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            start = i
            line, i = joined(lines, i)
            out.append((start + 1, line))
        else:
            out += [
                (i + 1, span) for span in re.findall(r"`([^`]+)`", lines[i]) if span.startswith(("python ", "python3 "))
            ]
        i += 1
    return out


def header_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for the commands in a YAML file's leading `#` comment block (`# ...: python ...` too)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    out, i = [], 0
    while i < len(lines):
        start = i
        line, i = joined(lines, i)
        found = re.search(r"(?:^|\s)(python3? .*)", line)
        if found:
            out.append((start + 1, found.group(1)))
        i += 1
    return out


def commands_in(name: str, numbered: list[tuple[int, str]]) -> list[Command]:
    """The python commands of these lines; a line that runs python but no shell could split is a failing case."""
    found = []
    for n, line in numbered:
        try:
            found += [Command(f"{name}:{n}", tuple(words), line.strip()) for words in python_commands(line)]
        except ValueError as err:  # e.g. an unclosed quote
            if re.search(r"(?:^|[\s;&|])python3? ", line):
                found.append(Command(f"{name}:{n}", ("python", "?"), line.strip(), f"{err}: {line.strip()}"))
    return found


def collect() -> list[Command]:
    found = []
    for path in DOCS:
        found += commands_in(str(path.relative_to(ROOT)), markdown_lines(path.read_text()))
    for path in HEADERS:
        found += commands_in(str(path.relative_to(ROOT)), header_lines(path.read_text()))
    return found


COMMANDS = collect()


# ---- how each entry point reads its command line -------------------------------------------------------------


@cache
def load(script: Path) -> ModuleType:
    """The script as a module (not run: its `__main__` block is skipped); importing registers its ConfigStore nodes."""
    spec = importlib.util.spec_from_file_location(f"readme_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def hydra_config_name(script: Path) -> str | None:
    """The config_name of the script's @hydra.main (a string, or a module-level name), None if it has none."""
    main = re.search(r"@hydra\.main\((.*?)\)", script.read_text(), re.DOTALL)
    if not main:
        return None
    name = re.search(r"config_name=(?:\"([^\"]+)\"|'([^']+)'|([A-Za-z_]\w*))", main.group(1))
    assert name, f"{script.name}: @hydra.main without config_name"
    return name.group(1) or name.group(2) or getattr(load(script), name.group(3))


def parse_overrides(args: list[str]) -> list:
    """Hydra's override grammar, one argument at a time: a rejected one fails with the entry points' one-line error."""
    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException as err:
            raise AssertionError(override_error(arg, parser) or err.message) from None
    return parsed


def first_job(overrides: list) -> list[str]:
    """The overrides of a sweep's first job (the first value of each `a,b`, `range()`, `choice()`)."""
    return [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
        for o in overrides
    ]


def compose(config_name: str, overrides: list) -> None:
    """The config composed with the overrides (of the first job of a sweep); Hydra's own keys need its config."""
    hydra_keys = any(o.key_or_group == "hydra" or o.key_or_group.startswith(("hydra.", "hydra/")) for o in overrides)
    composed(config_name, tuple(first_job(overrides)), hydra_keys)


@cache
def composed(config_name: str, overrides: tuple[str, ...], return_hydra_config: bool) -> None:
    compose_cfg(list(overrides), config_name=config_name, return_hydra_config=return_hydra_config)


def check_hydra_app(script: Path, args: list[str]) -> None:
    """As @hydra.main reads it: Hydra's flags (-m, --cfg job, ...), the grammar, then the composed config."""
    try:
        hydra_args = get_args_parser().parse_args(args)
    except SystemExit:
        raise AssertionError(f"Hydra's argument parser rejects {args}") from None
    overrides = parse_overrides(hydra_args.overrides)
    if not hydra_args.multirun:
        assert not any(o.is_sweep_override() for o in overrides), "a sweep without -m"
    compose(hydra_args.config_name or hydra_config_name(script), overrides)


def check_benchmark(args: list[str]) -> None:
    """scripts/benchmark.py: `bench.*` is a dotlist of its own, everything else overrides conf/config.yaml."""
    OmegaConf.from_dotlist([a for a in args if a.startswith("bench.")])
    overrides = parse_overrides([a for a in args if not a.startswith("bench.")])
    assert not any(o.is_sweep_override() for o in overrides), "benchmark.py runs one config, not a sweep"
    compose("config", overrides)


def check_compare_unets(args: list[str]) -> None:
    """scripts/compare_unets.py: its own `unets=A,B` (its parser), then one benchmark per U-Net."""
    try:
        unets, _, rest = load(ROOT / "scripts" / "compare_unets.py").parse(args)
    except ValueError as err:
        raise AssertionError(str(err)) from None
    for unet in unets:
        check_benchmark([f"unet={unet}", *rest])


class Parsed(Exception):
    """Raised by the patched argparse once a script's arguments are parsed: main() goes no further."""


def check_argparse(script: Path, args: list[str]) -> None:
    """An argparse script: its main() up to its parser's answer (an argparse error is the failure)."""
    parse_args, parse_known_args, inside = (
        argparse.ArgumentParser.parse_args,
        argparse.ArgumentParser.parse_known_args,
        [],
    )

    def parse_args_then_stop(self, *a, **kw):
        inside.append(self)
        try:
            parsed = parse_args(self, *a, **kw)
        finally:
            inside.pop()
        raise Parsed(parsed)

    def parse_known_args_then_stop(self, *a, **kw):  # called alone (not from parse_args): stop there too
        parsed = parse_known_args(self, *a, **kw)
        if inside:
            return parsed
        raise Parsed(parsed)

    def error(self, message):
        raise AssertionError(f"{script.name}: {message}")

    main = load(script).main
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args_then_stop),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_known_args_then_stop),
        mock.patch.object(argparse.ArgumentParser, "error", error),
        pytest.raises(Parsed),
    ):
        main(args)


SPECIAL = {"scripts/benchmark.py": check_benchmark, "scripts/compare_unets.py": check_compare_unets}


def check(words: tuple[str, ...] | list[str]) -> None:
    """Fails (AssertionError, or the composition's own error) unless the command works as typed up to its run."""
    assert len(words) > 1 and words[0] in PYTHON, f"not a python command: {words}"
    entry, args = words[1], list(words[2:])
    syntax = [w for w in args if w and all(c in OPERATORS for c in w)]
    assert not syntax, f"shell syntax {syntax} in the arguments: quote them"
    script = ROOT / entry
    assert entry.endswith(".py") and script.is_file(), f"{entry}: not an entry point (train.py or scripts/*.py)"
    if entry in SPECIAL:
        SPECIAL[entry](args)
    elif hydra_config_name(script):
        check_hydra_app(script, args)
    else:
        check_argparse(script, args)


# ---- the tests ----------------------------------------------------------------------------------------------------


def test_commands_found():
    """The extraction finds the documented commands of every source (a broken extractor checks nothing)."""
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert len(COMMANDS) >= 60, len(COMMANDS)
    assert {"README.md", "experiments/README.md", "experiments/_paper.yaml"} <= where, where
    assert {c.words[1] for c in COMMANDS} >= {
        "train.py",
        "scripts/sample.py",
        "scripts/evaluate.py",
        "scripts/benchmark.py",
        "scripts/compare_unets.py",
        "scripts/compare_runs.py",
        "scripts/plot_pareto.py",
        "scripts/precompute_text_embeddings.py",
        "scripts/validate_judge.py",
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_command_works_as_typed(command: Command):
    assert not command.error, command.error
    check(command.words)


def test_extractor_reads_lines_as_a_shell_does():
    text = "\n".join(
        [
            "```bash",
            "# a comment line",
            "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && python train.py",
            "HF_HUB_OFFLINE=1 WANDB_MODE=offline python -m pytest -q",
            "A=1 python train.py -m cond=a,b \\",
            "    'guidance=[1,2]' prompt=\"two red circles\" k=a#b   # why",
            "```",
            "Run `python train.py seed=1` or `ruff check .`.",
        ]
    )
    found = [(n, words) for n, line in markdown_lines(text) for words in python_commands(line)]
    assert found == [
        (3, ["python", "train.py"]),
        (5, ["python", "train.py", "-m", "cond=a,b", "guidance=[1,2]", "prompt=two red circles", "k=a#b"]),
        (8, ["python", "train.py", "seed=1"]),
    ]
    header = (
        "# @package _global_\n# Then:  python scripts/sample.py ckpt='[A,B]' \\\n#     n=2\nkey: 1\n# python no.py\n"
    )
    assert header_lines(header) == [(2, "python scripts/sample.py ckpt='[A,B]'      n=2")]


def test_old_unquoted_brace_line_fails():
    """The README's real-data line as it was: the shell strips the single quotes and Hydra's grammar rejects `{`."""
    (words,) = python_commands(OLD_REAL_DATA)
    assert "data.urls=/data/laion/{00000..00999}.tar" in words
    with pytest.raises(AssertionError, match=r"cannot parse override data\.urls=/data/laion/\{00000\.\.00999\}\.tar"):
        check(words)
    fixed = OLD_REAL_DATA.replace(
        "data.urls='/data/laion/{00000..00999}.tar'", "\"data.urls='/data/laion/{00000..00999}.tar'\""
    )
    check(python_commands(fixed)[0])


@pytest.mark.parametrize(
    "line, error",
    [
        ("python train.py seed=range(3)", "shell syntax"),  # unquoted parentheses: a shell syntax error
        ("python train.py -m seed=0,1 data.urls=/data/{0..9}.tar", "cannot parse override"),
        ("python train.py cond=a,b", "a sweep without -m"),
        ("python scripts/plot_pareto.py multirun/eval --no-such-flag", "unrecognized arguments"),
        ("python scripts/nope.py", "not an entry point"),
    ],
)
def test_checker_rejects(line, error):
    with pytest.raises(AssertionError, match=re.escape(error)):
        check(python_commands(line)[0])


def test_check_overrides_passes_what_hydra_accepts(capsys):
    check_overrides(
        ["-m", "cond=mean_pool,cross_attn", "seed=range(3)", "x=choice(a,b)", "+k=", "~key", "key=[1,2]"]
        + ["key={a:1}", "prompt=two red circles", "hydra/launcher=slurm", "hydra.run.dir=x"]
        + ["data.urls='/data/laion/{00000..00999}.tar'", "--cfg", "job"]
    )
    assert capsys.readouterr().err == ""


def test_check_overrides_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        check_overrides(["-m", "seed=0,1", "data.urls=/data/laion/{00000..00999}.tar", "--cfg", "job"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: cannot parse override data.urls=/data/laion/{00000..00999}.tar (mismatched input '{' expecting <EOF>):"
        " quote the value for Hydra, e.g. \"data.urls='/data/laion/{00000..00999}.tar'\"\n"
    )


def real_data_line() -> Command:
    """The README's first real-data training command (one job, LAION-style shards given by a brace pattern)."""
    return next(
        c
        for c in COMMANDS
        if c.where.startswith("README.md:") and c.words[1] == "train.py" and "data=webdataset" in c.words
        if any(w.startswith("data.urls='/data/") for w in c.words) and "-m" not in c.words
    )


def shell_env() -> dict[str, str]:
    """`python` on PATH is this interpreter (the venv), offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_real_data_line_through_bash():
    """The README's real-data training line, typed into bash (plus --cfg job): the brace pattern reaches the config."""
    command = real_data_line()
    out = subprocess.run(
        ["bash", "-c", f"{strip_comment(command.text)} --cfg job"],
        cwd=ROOT,
        env=shell_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "/data/laion/{00000..00999}.tar" in out.stdout


@pytest.mark.slow
def test_bad_brace_override_is_one_line():
    out = subprocess.run(
        [sys.executable, "train.py", "data=webdataset", "data.urls=/data/laion/{00000..00999}.tar", "--cfg", "job"],
        cwd=ROOT,
        env=shell_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "error: cannot parse override data.urls=/data/laion/{00000..00999}.tar (mismatched input '{' expecting <EOF>):"
        " quote the value for Hydra, e.g. \"data.urls='/data/laion/{00000..00999}.tar'\""
    ]
    assert out.stdout == ""
