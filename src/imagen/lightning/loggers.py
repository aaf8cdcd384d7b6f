"""Experiment loggers: W&B (offline automatically without a key or a reachable server, never blocking) with a CSV
fallback.

One function per `conf/logger/*.yaml` option; each returns the list of Lightning loggers of a run.
A CSV logger always writes `metrics.csv` into the run directory (continued by a resumed run), so runs can be compared
offline.

W&B's mode: the config's `mode`, else WANDB_MODE, else online with an API key (WANDB_API_KEY or a .netrc entry)
and offline without one. Before an online run starts, a TCP connect to the W&B server (`wandb_base_url()`: the
server wandb would talk to, or the proxy in between) must succeed within `probe_timeout` seconds: without network
the run goes offline at once, with one warning naming the folder to `wandb sync` later, instead of waiting for
wandb's own timeout. A server that accepts the connection but cannot start the run within `init_timeout` seconds
is the second line of defence: offline too, with the same warning. Offline and disabled runs make no network call.
"""

from __future__ import annotations

import json
import netrc
import os
import socket
import sys
import threading
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from pytorch_lightning.loggers import Logger

from imagen.lab.job import global_rank
from imagen.lightning.csv_log import ResumingCSVLogger

DEFAULT_WANDB_URL = "https://api.wandb.ai"  # only if wandb cannot say which server it would use
ONLINE_MODES = ("online", "run", "shared")  # wandb's modes that talk to the server ("run": old name of online)


def wandb_base_url() -> str:
    """The W&B server a run would talk to, resolved as `wandb.init` does: WANDB_BASE_URL, else `base_url` in W&B's
    settings files (`wandb login --host` writes it), else wandb's default server. No network call."""
    try:
        import wandb

        settings = wandb.Settings()
        config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser()
        settings.settings_system = str(config_dir / "settings")
        settings.update_from_system_settings()
        settings.update_from_env_vars(dict(os.environ))
        return str(settings.base_url)
    except Exception:  # an unreadable settings file or another wandb version: the environment, else the cloud
        return os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_URL


def _netrc_path() -> Path:
    return Path(os.environ.get("NETRC") or "~/.netrc").expanduser()


def _wandb_key_available() -> bool:
    """WANDB_API_KEY, or a .netrc entry (NETRC, else ~/.netrc) for the W&B server or for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        entries = netrc.netrc(str(_netrc_path()))
    except (OSError, netrc.NetrcParseError):
        return False
    hosts = {urlsplit(DEFAULT_WANDB_URL).netloc, urlsplit(wandb_base_url()).netloc}
    return any(entries.authenticators(host) is not None for host in hosts if host)


def wandb_mode(requested: str | None = None) -> str:
    """The explicit mode, else WANDB_MODE, else "online" with an API key and "offline" without one."""
    return requested or os.environ.get("WANDB_MODE") or ("online" if _wandb_key_available() else "offline")


def _connect_target(url: str) -> tuple[str, int]:
    """(host, port) of the first hop to `url`: the HTTP(S) proxy wandb would use (WANDB_HTTP(S)_PROXY, else the
    standard proxy variables unless NO_PROXY exempts the host), else the server itself."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    proxy = os.environ.get(f"WANDB_{parts.scheme.upper()}_PROXY")
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not proxy and not loopback and not urllib.request.proxy_bypass(parts.hostname):
        proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy:
        hop = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if hop.hostname:
            return hop.hostname, hop.port or (443 if hop.scheme == "https" else 80)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def probe_server(url: str, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to the server at `url` (or its proxy) opens within `timeout` seconds, and what
    happened ("host:port" or the error). Bounded by `timeout` even when name resolution hangs; never raises."""
    try:
        host, port = _connect_target(url)
    except Exception as err:
        return False, f"{type(err).__name__}: {err}"
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except Exception as err:  # socket.gaierror, ConnectionRefusedError, TimeoutError, ...
            outcome.append(f"{host}:{port}: {str(err) or type(err).__name__}")

    try:
        # A daemon thread: name resolution has no timeout of its own, and a hung one must not hold the run.
        thread = threading.Thread(target=connect, name="wandb-probe", daemon=True)
        thread.start()
        thread.join(timeout)
    except Exception as err:
        return False, f"probe failed: {type(err).__name__}: {err}"
    if not outcome:
        return False, f"{host}:{port}: no answer within {timeout:g} s"
    return outcome[0] is None, outcome[0] or f"{host}:{port}"


def csv_logger(save_dir: str, **_) -> list[Logger]:
    """metrics.csv directly in the run directory (a run's name and group are W&B's business)."""
    return [ResumingCSVLogger(save_dir)]


def record_wandb_run(logger: Logger, save_dir: str | Path) -> None:
    """Append the started W&B run (id, name, group, job_type, ...) to `<save_dir>/wandb_runs.jsonl`: one line per
    W&B run of the folder, written by the process that owns the run (rank 0), for tests and compare_runs."""
    run = getattr(logger, "_experiment", None)
    if not getattr(run, "id", None):
        return
    init = getattr(logger, "_wandb_init", {})
    line = {
        "id": run.id,
        **{k: init.get(k) for k in ("name", "group", "job_type", "project", "mode")},
        "tags": list(init.get("tags") or []),
    }
    path = Path(save_dir) / "wandb_runs.jsonl"
    if path.is_file() and any(json.loads(x)["id"] == run.id for x in path.read_text().splitlines()):
        return  # ddp_spawn: the run started in the main process and the worker attached to it
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def wandb_logger(
    save_dir: str,
    project: str,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str | None = None,
    job_type: str = "train",
    probe_timeout: float | None = 3.0,
    init_timeout: float = 20.0,
    **_,
) -> list[Logger]:
    """W&B plus CSV; if wandb cannot start, CSV alone with a warning (the run goes on). The run starts here (rank 0),
    so a dead server is found before training: an unreachable one by a `probe_timeout`-second TCP probe (null or 0
    skips the probe), one that cannot start the run by wandb's `init_timeout`; either way the run goes offline.
    Under ddp_spawn the rank-0 worker attaches to the run (Lightning's WandbLogger pickling)."""
    loggers = csv_logger(save_dir)
    try:
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        def make(run_mode: str) -> WandbLogger:
            online = run_mode in ONLINE_MODES  # offline runs make no network call: wandb's default timeout
            logger = WandbLogger(
                save_dir=save_dir,
                project=project,
                name=name,
                group=group,
                tags=list(tags or []),
                job_type=job_type,
                mode=run_mode,
                settings=wandb.Settings(silent=True, **({"init_timeout": init_timeout} if online else {})),
            )
            _ = logger.experiment  # start the run now (rank 0)
            record_wandb_run(logger, save_dir)
            return logger

        run_mode = wandb_mode(mode)
        why_offline = None
        if run_mode in ONLINE_MODES and (probe_timeout or 0) > 0 and global_rank() == 0:  # other ranks log nothing
            url = wandb_base_url()
            reachable, detail = probe_server(url, probe_timeout)
            why_offline = None if reachable else f"W&B server {url} unreachable ({detail})"
        if why_offline is None:
            try:
                loggers.append(make(run_mode))
                return loggers
            except Exception as err:
                if run_mode not in ONLINE_MODES:
                    raise
                why_offline = f"W&B online run could not start ({' '.join(str(err).split())})"
        logger = make("offline")
        loggers.append(logger)
        run_dir = getattr(logger.experiment, "sync_dir", None)
        run_dir = run_dir if isinstance(run_dir, str) else Path(save_dir) / "wandb"
        warnings.warn(f"{why_offline}; logging offline, upload later with `wandb sync {run_dir}`")
    except Exception as err:  # a logging failure must never cost the run
        warnings.warn(f"W&B logger unavailable ({err}); logging to CSV in {Path(save_dir)} only")
    return loggers


def no_logger(**_) -> list[Logger]:
    return []


def finish_wandb() -> None:
    """Close this job's W&B run, so the jobs of a multirun (and a job's training and evaluation) never log into
    one run: Lightning's WandbLogger reuses a live `wandb.run`."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
