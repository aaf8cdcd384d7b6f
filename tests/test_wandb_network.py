"""W&B without network: the server probe, and a run with an API key but no reachable server going offline at once
(one warning naming `wandb sync`) instead of waiting for wandb's own timeout. No test needs network: the
"unreachable server" is a closed port on 127.0.0.1, and nothing is written to the home directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from imagen.lightning import loggers as lg

from conftest import ROOT, tiny_overrides

FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, the shape of a W&B API key
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_wandb_env(tmp_path: Path) -> dict[str, str]:
    """The variables of a W&B session confined to tmp_path: no WANDB_* of the caller, no home directory files
    (.netrc, ~/.config/wandb), no proxies."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "NETRC": str(home / ".netrc"),  # absent: only WANDB_API_KEY can make a run online
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_SILENT": "true",
    }


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """A fresh W&B session (its settings are read once per process) in an isolated environment; the run and the
    session are closed afterwards."""
    import wandb

    wandb.teardown()  # before monkeypatching: it also clears the WANDB_SERVICE of an earlier session
    for key in list(os.environ):
        if key.startswith("WANDB_") or key.upper() in PROXY_VARS:
            monkeypatch.delenv(key)
    for key, value in isolated_wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    yield
    lg.finish_wandb()
    wandb.teardown()


def wandb_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "W&B" in str(w.message)]


# --- the probe ---------------------------------------------------------------------------------------------------


def test_probe_reachable_server():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        start = time.perf_counter()
        reachable, detail = lg.probe_server(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2)
    assert reachable, detail
    assert time.perf_counter() - start < 1


def test_probe_refused():
    port = closed_port()
    start = time.perf_counter()
    reachable, detail = lg.probe_server(f"http://127.0.0.1:{port}", timeout=2)
    assert not reachable
    assert f"127.0.0.1:{port}" in detail and "refused" in detail.lower()
    assert time.perf_counter() - start < 1


def test_probe_times_out(monkeypatch):
    """A server that never answers (or a name lookup that hangs): False within the timeout, whatever the socket
    call does meanwhile."""

    def black_hole(address, timeout=None, **_):
        time.sleep(5)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", black_hole)
    start = time.perf_counter()
    reachable, detail = lg.probe_server("https://api.wandb.ai", timeout=0.5)
    elapsed = time.perf_counter() - start
    assert not reachable
    assert "api.wandb.ai:443" in detail and "no answer within 0.5 s" in detail
    assert elapsed < 0.5 + 1


@pytest.mark.parametrize("url", ["", "not a url", "ftp://example.org", "http://", None, 42])
def test_probe_never_raises(url):
    reachable, detail = lg.probe_server(url, timeout=0.5)
    assert not reachable and detail


def test_probe_goes_through_the_proxy(monkeypatch):
    """Behind an HTTPS proxy the first hop is the proxy: reachable even though api.wandb.ai is not resolvable."""
    for key in list(os.environ):
        if key.upper() in PROXY_VARS or key.startswith("WANDB_HTTP"):
            monkeypatch.delenv(key)
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert lg.probe_server("https://api.wandb.ai", timeout=2)[0]
        monkeypatch.setenv("NO_PROXY", "api.wandb.ai")  # exempt: straight to the server again
        monkeypatch.setattr(socket, "create_connection", _refuse)
        assert not lg.probe_server("https://api.wandb.ai", timeout=2)[0]


def _refuse(address, timeout=None, **_):
    raise ConnectionRefusedError(f"refused {address}")


def test_wandb_base_url(wandb_env, monkeypatch, tmp_path):
    import wandb

    assert lg.wandb_base_url() == wandb.Settings().base_url  # wandb's default server
    settings = tmp_path / "wandb_config" / "settings"  # what `wandb login --host` writes
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nbase_url = http://127.0.0.1:8080\n")
    assert lg.wandb_base_url() == "http://127.0.0.1:8080"
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9090")  # the environment wins
    assert lg.wandb_base_url() == "http://127.0.0.1:9090"


# --- the logger --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_key_without_server_goes_offline_at_once(wandb_env, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    assert lg.wandb_mode() == "online"
    save_dir = tmp_path / "run"
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loggers = lg.wandb_logger(save_dir=str(save_dir), project="t")
    elapsed = time.perf_counter() - start
    print(f"wandb_logger with a key and no server: {elapsed:.1f} s")
    assert len(loggers) == 2 and isinstance(loggers[0], CSVLogger) and isinstance(loggers[1], WandbLogger)
    run = loggers[1].experiment
    assert run.offline and run.settings.mode == "offline"
    assert Path(run.dir).resolve().is_relative_to(save_dir.resolve())
    assert list((save_dir / "wandb").glob("offline-run-*"))
    assert not list((save_dir / "wandb").glob("run-*")), "no online run may have been attempted"
    (message,) = wandb_warnings(caught)
    assert "unreachable" in message and "refused" in message.lower() and "\n" not in message
    assert f"wandb sync {run.sync_dir}" in message
    assert elapsed < 15  # wandb's own fallback waited ~60 s; 15 s leaves room for a loaded machine


def test_offline_mode_makes_no_network_call(wandb_env, monkeypatch, tmp_path):
    def no_probe(*args, **kwargs):
        raise AssertionError("an offline run must not probe the server")

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(lg, "probe_server", no_probe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loggers = lg.wandb_logger(save_dir=str(tmp_path / "run"), project="t")
    assert loggers[1].experiment.offline
    assert wandb_warnings(caught) == []


@pytest.mark.slow
def test_online_start_failure_falls_back_to_offline(wandb_env, monkeypatch, tmp_path):
    """The second line of defence: the probe passes but the run cannot start within `init_timeout`."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(lg, "probe_server", lambda url, timeout: (True, url))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loggers = lg.wandb_logger(save_dir=str(tmp_path / "run"), project="t", init_timeout=3)
    assert loggers[1].experiment.offline
    (message,) = wandb_warnings(caught)
    assert "could not start" in message and "wandb sync" in message and "\n" not in message
    assert time.perf_counter() - start < 20


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_with_key_and_no_network(tmp_path):
    """`python train.py`, 2 steps, with an API key and no reachable W&B server: an offline W&B run in the run
    directory, and no minute lost waiting for the server (wandb's own fallback took ~70 s of a ~85 s run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k.upper() not in PROXY_VARS}
    env.update(isolated_wandb_env(tmp_path))
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface")),  # HOME moves, the hub not
        WANDB_API_KEY=FAKE_KEY,
        WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}",
    )
    overrides = [o.replace("logger=csv", "logger=wandb") for o in tiny_overrides(tmp_path, steps=2)]
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    print(f"2-step train.py with a W&B key and no reachable server: {elapsed:.1f} s")
    assert out.returncode == 0, out.stderr[-3000:]
    assert list((run_dir / "wandb").glob("offline-run-*")), sorted(p.name for p in run_dir.rglob("*"))
    assert not list((run_dir / "wandb").glob("run-*")), "no online run may have been attempted"
    assert "unreachable" in out.stderr and "wandb sync" in out.stderr
    assert elapsed < 60
