"""Where the controller's API credentials come from: the in-cluster service account, or a kubeconfig.

- **In a pod** (no kubeconfig given, `KUBERNETES_SERVICE_HOST` set): the service account's token,
  CA and namespace files, read directly — as the official client's in-cluster loader does. The
  token is read again when it may have been rotated (the kubelet rotates projected tokens).
- **A kubeconfig**: the official `kubernetes` package's loader, so every auth method it supports
  (client certificates, tokens, exec plugins, auth providers) works — run in a short-lived child
  process (`python -m controller.kube.config`), which hands back the server, the token and the
  certificate data. The controller's own process never imports the `kubernetes` package: importing
  it pulls in thousands of generated model classes (~22 MB resident), which the controller does not
  use (`agent-controller run` keeps kopf from importing them too; see cli.py).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REREAD_SECONDS = 60.0


class ConfigError(OSError):
    """No usable API configuration; the message is one line, for the user."""


class TokenFile:
    """A bearer token read from a file, read again at most every TOKEN_REREAD_SECONDS."""

    def __init__(self, path: str, token: str):
        self.path = path
        self._token = token
        self._read_at = time.monotonic()

    def current(self) -> str:
        if time.monotonic() - self._read_at >= TOKEN_REREAD_SECONDS:
            self.reread()
        return self._token

    def reread(self) -> None:
        self._read_at = time.monotonic()
        try:
            with open(self.path) as fh:
                self._token = fh.read().strip() or self._token
        except OSError:
            pass        # keep the last token; the API server's 401 will say if it is stale


def in_cluster(sa_dir: str = SA_DIR, environ: Any = os.environ) -> dict[str, Any]:
    """The service account's credentials (the same sources as the official in-cluster loader)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError("in-cluster config: KUBERNETES_SERVICE_HOST/PORT are not set")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"       # IPv6
    token_path = os.path.join(sa_dir, "token")
    try:
        with open(token_path) as fh:
            token = fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"in-cluster config: cannot read the service-account token: {exc}") from exc
    if not token:
        raise ConfigError(f"in-cluster config: {token_path} is empty")
    ca = os.path.join(sa_dir, "ca.crt")
    namespace = "default"
    try:
        with open(os.path.join(sa_dir, "namespace")) as fh:
            namespace = fh.read().strip() or "default"
    except OSError:
        pass
    return {"server": f"https://{host}:{port}", "token": token, "token_file": token_path,
            "ca_file": ca if os.path.exists(ca) else None, "verify_ssl": True, "default_namespace": namespace}


def from_kubeconfig(kubeconfig: str | None, context: str | None) -> dict[str, Any]:
    """The official loader's answer, from a child process. Certificate data comes back as PEM text and
    is written to a fresh private directory (mode 0700) that is removed when this process exits.
    `expires_at` (Unix time) is when the credentials expire, if the kubeconfig's exec plugin or auth
    provider says so."""
    cmd = [sys.executable, "-m", "controller.kube.config"]
    if kubeconfig:
        cmd += ["--kubeconfig", kubeconfig]
    if context:
        cmd += ["--context", context]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"loading the kubeconfig: {exc}") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ConfigError(f"kubeconfig: {lines[-1] if lines else f'loader exited {done.returncode}'}")
    loaded: dict[str, Any] = json.loads(done.stdout)
    pems = {key: loaded.pop(key) for key in ("ca_pem", "cert_pem", "key_pem")}
    if any(pems.values()):
        folder = tempfile.mkdtemp(prefix="agent-controller-tls-")
        atexit.register(shutil.rmtree, folder, True)
        for key, pem in pems.items():
            if pem:
                path = os.path.join(folder, key.replace("_pem", ".pem"))
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(pem)
                loaded[key.replace("_pem", "_file")] = path
    return loaded


def _official(kubeconfig: str | None, context: str | None) -> dict[str, Any]:
    """In the child process: the official loader, its result as JSON-able data (with the credentials'
    expiry, when the exec plugin or auth provider gave one, so the parent can refresh in time)."""
    from kubernetes import client as kclient
    from kubernetes.config import kube_config as kc

    cfg = kclient.Configuration()
    loader = kc._get_kube_config_loader(filename=kubeconfig or os.path.expanduser(
        os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]), active_context=context)
    loader.load_and_set(cfg)
    namespace = "default"
    try:
        namespace = loader.current_context.get("context", {}).get("namespace") or "default"
    except Exception:  # noqa: BLE001 - the namespace is only a default
        pass
    auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    token = None
    if auth:
        token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
    expiry = loader.__dict__.get("expiry")

    def pem(path: str | None) -> str | None:
        if not path:
            return None
        with open(path) as fh:
            return fh.read()

    return {"server": cfg.host.rstrip("/"), "token": token, "verify_ssl": bool(cfg.verify_ssl),
            "default_namespace": namespace, "ca_pem": pem(cfg.ssl_ca_cert), "cert_pem": pem(cfg.cert_file),
            "key_pem": pem(cfg.key_file), "tls_server_name": getattr(cfg, "tls_server_name", None) or None,
            "proxy_url": getattr(cfg, "proxy", None) or None,
            "expires_at": expiry.timestamp() if expiry is not None else None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.kube.config",
                                     description="Print the API configuration a kubeconfig gives, as JSON.")
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--context", default=None)
    args = parser.parse_args(argv)
    try:
        result = _official(args.kubeconfig, args.context)
    except Exception as exc:  # noqa: BLE001 - one line for the parent, whatever the loader raised
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
