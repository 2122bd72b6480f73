"""``aioresty envoy run|reload``: Envoy under a small supervisor that hot-restarts it.

``run CONFIG [--watch] [-- envoy args]`` writes the generated Envoy config to a
private state directory (never onto Envoy's command line), refuses to start
when the config's listen address is already served (an older Envoy left
running would otherwise keep answering with old code), and starts Envoy with
a ``--base-id`` derived from the config's path, so projects on one host do
not collide.  ``reload CONFIG`` (or SIGHUP to the supervisor, or a changed
file with ``--watch``) regenerates the config and starts the next hot-restart
epoch: the new Envoy - with a fresh Python, so new code - takes over the
listeners, the old one drains its connections and exits.  A new epoch that
fails to start leaves the old one serving.  SIGTERM/SIGINT stop every epoch;
the exit code is the newest Envoy's.

State (mode 0700): ``$AIORESTY_STATE_DIR`` (default ``/tmp/aioresty-<uid>``)
``/envoy-<base id>/``: ``envoy-<epoch>.json`` and ``run.pid``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from . import cli, envoy_config, paths

# Drain defaults unless the Envoy arguments set them (seconds)
DRAIN_ARGS = {"--drain-time-s": "5", "--parent-shutdown-time-s": "10"}
WATCH_PERIOD = 0.5  # seconds between --watch scans
WATCH_MAX_FILES = 5000


def base_id(config: str | os.PathLike[str]) -> int:
    """The hot-restart base id of a config: stable per path, never Envoy's 0."""
    return zlib.crc32(str(Path(config).resolve()).encode()) % 65000 + 1


def state_dir(config: str | os.PathLike[str]) -> Path:
    d = paths.state_dir() / f"envoy-{base_id(config)}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _served(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _log(msg: str) -> None:
    print(f"aioresty envoy run: {msg}", file=sys.stderr, flush=True)


class Supervisor:
    """The epochs of one config's Envoy (this process's children)."""

    def __init__(self, config: str, envoy_args: list[str], watch: bool) -> None:
        self.config = config
        self.envoy_args = list(envoy_args)
        for flag, value in DRAIN_ARGS.items():
            if not any(a == flag or a.startswith(flag + "=") for a in envoy_args):
                self.envoy_args += [flag, value]
        self.watch = watch
        self.bid = base_id(config)
        self.state = state_dir(config)
        self.binary = cli.envoy_binary()
        self.epochs: list[tuple[int, subprocess.Popen[bytes]]] = []  # oldest first
        self.next_epoch = 0
        self.signals: list[int] = []
        self.user: dict[str, Any] | None = None

    # -- one epoch ------------------------------------------------------
    def _config_args(self, epoch: int) -> list[str]:
        """Generates the config into the state dir; the Envoy args naming it."""
        path = self.config
        if not cli.is_envoy_config(path):
            self.user = cli.load_user(path)
            cfg = cli.build_from_user(self.user, Path(path).resolve().parent, path)
            return ["-c", str(self._write(epoch, cfg))]
        parsed = cli.load_envoy(path)
        if parsed is None:  # YAML without PyYAML: Envoy merges the bridge pieces in
            if not envoy_config.uses_stock_lua(Path(path).read_text()):
                return ["-c", path]
            return ["-c", path, "--config-yaml", json.dumps(envoy_config.merge_bridge({}))]
        cli.warn_cluster_header(parsed, path)
        if envoy_config.uses_stock_lua(parsed):  # the bridge only serves Envoy's Lua filter
            parsed = envoy_config.merge_bridge(parsed)
        return ["-c", str(self._write(epoch, parsed))]

    def _write(self, epoch: int, cfg: dict[str, Any]) -> Path:
        out = self.state / f"envoy-{epoch}.json"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        for old in self.state.glob("envoy-*.json"):  # keep the live epochs' files
            n = old.stem.partition("-")[2]
            if n.isdigit() and int(n) < epoch - 1:
                old.unlink(missing_ok=True)
        return out

    def spawn(self) -> bool:
        """Starts the next epoch; False (and the old epochs serve on) if it cannot."""
        epoch = self.epochs[-1][0] + 1 if self.epochs else 0
        try:
            args = self._config_args(epoch)
        except cli.UsageError as e:
            if not self.epochs:
                raise
            _log(f"reload refused, epoch {self.epochs[-1][0]} serves on: {e}")
            return False
        env = cli.envoy_env(self.user, Path(self.config).resolve().parent)
        if self.epochs and not self._valid(args, env):
            return False
        argv = [self.binary, *args, "--base-id", str(self.bid), "--restart-epoch", str(epoch)]
        proc = subprocess.Popen([*argv, *self.envoy_args], env=env)
        self.epochs.append((epoch, proc))
        _log(f"epoch {epoch} started (pid {proc.pid}, base id {self.bid})")
        return True

    def _valid(self, args: list[str], env: dict[str, str]) -> bool:
        """Envoy's --mode validate of a reload's config first: a new epoch that
        fails to initialise would leave Envoy's hot-restart state "initializing"
        and refuse every later reload (and it takes the old epoch's admin)."""
        r = subprocess.run(
            [self.binary, *args, *self.envoy_args, "--mode", "validate", "--disable-hot-restart"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode == 0:
            return True
        out = (r.stdout + r.stderr).strip().splitlines()
        why = next((ln for ln in reversed(out) if ln.strip()), f"exit {r.returncode}")
        serving = self.epochs[-1][0]
        _log(f"reload refused, epoch {serving} serves on: the new config is invalid: {why}")
        return False

    # -- the loop ---------------------------------------------------------
    def _watched(self) -> dict[str, float]:
        files: list[Path] = [Path(self.config)]
        user = self.user or {}
        base = Path(self.config).resolve().parent
        for spec in (user.get("lua") or {}).values():
            f = spec.get("file") if isinstance(spec, dict) else spec
            if isinstance(f, str):
                files.append(base / f)
        for d in user.get("pythonpath") or []:
            files.extend(sorted((base / d).rglob("*.py"))[:WATCH_MAX_FILES])
        out: dict[str, float] = {}
        for f in files:
            try:
                out[str(f)] = f.stat().st_mtime
            except OSError:
                out[str(f)] = -1.0
        return out

    def run(self) -> int:
        listen = None
        if not cli.is_envoy_config(self.config):
            listen = cli.load_user(self.config).get("listen", "127.0.0.1:8000")
        if listen and _served(listen):
            raise cli.UsageError(
                f"{listen} is already served by another process (an older `aioresty envoy "
                "run`?): stop it, or `aioresty envoy reload` the one that runs this config"
            )
        pidfile = self.state / "run.pid"
        pidfile.write_text(str(os.getpid()))
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: self.signals.append(s))
        try:
            self.spawn()
            return self._loop()
        finally:
            if pidfile.read_text() == str(os.getpid()):
                pidfile.unlink(missing_ok=True)

    def _loop(self) -> int:
        seen = self._watched() if self.watch else {}
        last_scan = time.monotonic()
        while True:
            while self.signals:
                sig = self.signals.pop(0)
                if sig == signal.SIGHUP:
                    self.spawn()
                else:
                    return self._stop(sig)
            if self.watch and time.monotonic() - last_scan >= WATCH_PERIOD:
                last_scan = time.monotonic()
                now = self._watched()
                if now != seen:
                    changed = sorted(
                        k for k in now.keys() | seen.keys() if now.get(k) != seen.get(k)
                    )
                    _log(f"changed: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
                    seen = now
                    self.spawn()
            for epoch, proc in list(self.epochs):
                rc = proc.poll()
                if rc is None:
                    continue
                self.epochs.remove((epoch, proc))
                newest = not self.epochs or epoch > self.epochs[-1][0]
                if newest and self.epochs:
                    _log(f"epoch {epoch} failed (exit {rc}): epoch {self.epochs[-1][0]} serves on")
                elif newest:
                    _log(f"epoch {epoch} exited ({rc})")
                    return rc
                else:
                    _log(f"epoch {epoch} drained and exited ({rc})")
            time.sleep(0.1)

    def _stop(self, sig: int) -> int:
        for _, proc in self.epochs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if sig != signal.SIGINT else signal.SIGINT)
        rc = 0
        for epoch, proc in self.epochs:
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            _log(f"epoch {epoch} stopped ({rc})")
        return rc


def run(config: str, envoy_args: list[str], watch: bool) -> int:
    return Supervisor(config, envoy_args, watch).run()


def reload(config: str) -> int:
    """SIGHUP to the supervisor running ``config``."""
    pidfile = state_dir(config) / "run.pid"
    pid = paths.hup(pidfile)
    if pid is None:
        raise cli.UsageError(
            f"no `aioresty envoy run {config}` is running (no live pid in {pidfile})"
        )
    print(f"aioresty: reload requested (supervisor pid {pid})", file=sys.stderr)
    return 0
