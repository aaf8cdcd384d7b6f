"""What the entry points (train.py, scripts/) share: a job run under Hydra where bad input is one `error:` line, and
the command line's overrides checked against Hydra's grammar before Hydra sees them."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig

LEXER_ERROR = "LexerNoViableAltException: "


def read_prompts(cfg: DictConfig) -> list[str]:
    """The prompts of `prompt` (a string or a list) and `prompts_file` (one per line)."""
    prompts: list[str] = []
    if cfg.prompt is not None:
        prompts += [cfg.prompt] if isinstance(cfg.prompt, str) else [str(p) for p in cfg.prompt]
    if cfg.prompts_file is not None:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts_file {path} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError('no prompt: give prompt="..." (or a list) or prompts_file=<file, one per line>')
    return prompts


def run_script(job: Callable[[DictConfig, Path], Any], cfg: DictConfig) -> Any:
    """job(cfg, this Hydra job's run directory) for the scripts (sample, evaluate): bad input (a ValueError or
    OSError raised before or during the job) is one `error: ...` line and exit status 2, not a traceback."""
    try:
        return job(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _reason(err: OverrideParseException) -> str:
    """Hydra's parse error in one line: its first line without the link (the lexer's: the character it stopped at)."""
    lines = [line for line in err.message.splitlines() if line.strip() and not line.startswith("See https://")]
    if lines[0].startswith(LEXER_ERROR) and len(lines) > 1 and "^" in lines[1]:
        at = lines[1].index("^") - len(LEXER_ERROR)
        return f"unexpected character {err.override[at : at + 1]!r} at column {at + 1}"
    if lines[0].startswith("Error parsing override") and len(lines) > 1:
        return lines[1]
    return lines[0]


def override_error(arg: str, parser: OverridesParser | None = None) -> str | None:
    """The one-line error for a command-line override that Hydra's override grammar rejects; None when it parses."""
    parser = parser or OverridesParser.create()
    try:
        parser.parse_overrides([arg])
        return None
    except OverrideParseException as err:
        reason = _reason(err)
    key, eq, value = arg.partition("=")
    if not eq:
        return f"error: cannot parse override {arg} ({reason}): overrides are key=value (+key=value adds, ~key deletes)"
    quoted = f"{key}='{value}'" if "'" not in value else f'{key}="{value}"'  # a quoted string for Hydra
    try:
        parser.parse_overrides([quoted])
    except OverrideParseException:
        quoted = "key='value'"
    # ... kept whole by the shell: inside double quotes unless the shell would expand something there
    example = shlex.quote(quoted) if any(c in quoted for c in '"$`\\!') else f'"{quoted}"'
    return f"error: cannot parse override {arg} ({reason}): quote the value for Hydra, e.g. {example}"


def check_overrides(argv: Iterable[str] | None = None, hydra_app: bool = True, skip: tuple[str, ...] = ()) -> None:
    """Call before a Hydra entry point starts: the first command-line override (default sys.argv[1:]) that Hydra's
    grammar rejects is one `error:` line naming it and how to quote it, and exit status 2, instead of Hydra's
    multi-line parse error. hydra_app: the flags (-m, --cfg job, ...) are read by Hydra's own argument parser, so
    what reaches the check is exactly what @hydra.main would parse; otherwise every argument is an override.
    Arguments starting with one of `skip` are not checked (they never reach Hydra). Everything Hydra accepts
    (sweeps, +key=, ~key, lists, dicts) passes untouched."""
    args = list(sys.argv[1:] if argv is None else argv)
    if hydra_app:
        args = get_args_parser().parse_args(args).overrides
    parser = OverridesParser.create()
    for arg in args:
        error = None if arg.startswith(skip) else override_error(arg, parser)
        if error:
            print(error, file=sys.stderr)
            sys.exit(2)
