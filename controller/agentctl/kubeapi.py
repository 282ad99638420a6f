"""The Kubernetes API as agentctl uses it: JSON over ``urllib`` and ``ssl``, nothing else.

Credentials, as client-go finds them:

- **in-cluster** (``KUBERNETES_SERVICE_HOST`` is set): ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``,
  the service account's ``ca.crt`` and ``token`` (re-read for every request: the kubelet rotates
  it) in ``/var/run/secrets/kubernetes.io/serviceaccount`` or ``$AGENT_SERVICEACCOUNT_DIR``;
- otherwise a **kubeconfig** (``$KUBECONFIG``, a list separated by ``:``, else ``~/.kube/config``;
  for each name the first file that defines it wins): the current context's cluster ``server``,
  ``certificate-authority`` / ``certificate-authority-data`` (else the system's CAs),
  ``insecure-skip-tls-verify``, ``proxy-url``, and its user's ``token`` / ``tokenFile``,
  ``client-certificate(-data)`` + ``client-key(-data)`` or ``username``/``password``. Exec
  plugins and auth providers are not run (a clear error says so). A kubeconfig is read with PyYAML
  when it is importable; without it only a JSON kubeconfig can be read (JSON is YAML).

Environment proxies (``HTTPS_PROXY``…) are not used, as client-go does not for in-cluster
config: a pod's proxy for the internet must not carry the API calls. Redirects are not followed
(they would carry the token elsewhere).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import http.client
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.agentctl import __version__

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_DIR_ENV = "AGENT_SERVICEACCOUNT_DIR"
"""Where the pod's service-account files (token, ca.crt, namespace) are, when not at SA_DIR (the node
simulator's local-process mode sets it; a real kubelet mounts them at SA_DIR)."""
MAX_ERROR_BODY = 65536


class ConfigError(Exception):
    """The credentials cannot be loaded or used (one line; never worth retrying)."""


class ApiError(Exception):
    """The API answered with an HTTP error status."""

    def __init__(self, status: int, reason: str, body: bytes = b"", retry_after: float | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.retry_after = retry_after
        super().__init__(self.message())

    def message(self) -> str:
        """The API's own message (its ``Status`` body), else ``HTTP <code> <reason>``."""
        try:
            data = json.loads(self.body)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("message"):
            return one_line(str(data["message"]))
        return f"HTTP {self.status} {self.reason or ''}".strip()


class TransportError(Exception):
    """The API could not be reached or did not answer (connection refused or reset, timeout, TLS)."""


class ResponseError(Exception):
    """The API answered something that is not a JSON object."""


def one_line(text: str) -> str:
    return " ".join(text.split())


def sa_dir() -> str:
    """The service-account directory: ``$AGENT_SERVICEACCOUNT_DIR``, else the standard mount path."""
    return os.environ.get(SA_DIR_ENV) or SA_DIR


def in_cluster() -> bool:
    """True inside a pod (the in-cluster config is used then)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def kubeconfig_paths() -> str:
    """``$KUBECONFIG`` as given, else ``~/.kube/config``."""
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


# --------------------------------------------------------------------------- configuration


@dataclass
class Config:
    """Where the API is and how to authenticate to it."""

    server: str
    """``scheme://host[:port][/prefix]``, without a trailing slash."""
    context: ssl.SSLContext | None = None
    token: str | None = None
    token_file: str | None = None
    """Read again for every request (a rotated service-account token is picked up)."""
    basic: str | None = None
    """``user:password`` for basic authentication."""
    proxy: str | None = None
    namespace: str | None = None

    def authorization(self) -> str | None:
        """The ``Authorization`` header value for the next request."""
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read token file {self.token_file}: {exc.strerror or exc}") from None
            if not token:
                raise ConfigError(f"token file {self.token_file} is empty")
            return f"Bearer {token}"
        if self.token:
            return f"Bearer {self.token}"
        if self.basic:
            return "Basic " + base64.b64encode(self.basic.encode()).decode()
        return None


def in_cluster_config() -> Config:
    """The pod's service account (``KUBERNETES_SERVICE_HOST``/``_PORT``, token, ca.crt)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "").strip()
    if not host or not port:
        raise ConfigError("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    d = sa_dir()
    token_file = os.path.join(d, "token")
    ca_file = os.path.join(d, "ca.crt")
    cfg = Config(server=f"https://{host}:{port}", token_file=token_file, context=_tls_context(ca_file=ca_file))
    cfg.authorization()  # the token must be there now
    return cfg


def _tls_context(
    *, ca_file: str | None = None, ca_data: bytes | None = None, insecure: bool = False
) -> ssl.SSLContext:
    try:
        if ca_file is not None and not os.path.isfile(ca_file):
            raise ConfigError(f"CA file {ca_file} does not exist")
        cadata: str | bytes | None = ca_data
        if ca_data is not None and ca_data.lstrip().startswith(b"-----"):
            cadata = ca_data.decode("ascii", "replace")  # PEM (bytes would be taken for DER)
        ctx = ssl.create_default_context(cafile=ca_file, cadata=cadata)
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot load the CA certificate: {one_line(str(exc))}") from None
    except OSError as exc:
        raise ConfigError(f"cannot load the CA certificate: {exc.strerror or exc}") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _parse(text: str, path: str) -> Any:
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)
        except ValueError:
            raise ConfigError(
                f"{path} is not JSON, and reading YAML needs PyYAML, which is not installed "
                "(pip install pyyaml, or give agentctl a JSON kubeconfig)"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {one_line(str(exc))}") from None


def _load_kubeconfigs(paths: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged kubeconfig of ``paths`` (first definition of a name wins, as kubectl merges),
    and for each cluster/user name the directory of the file that defined it (relative paths)."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    where: dict[str, str] = {}
    found = False
    names = [p for p in paths.split(os.pathsep) if p]
    for path in names:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            continue  # as kubectl: a missing file of the list is skipped
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        found = True
        doc = _parse(text, path)
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ConfigError(f"{path} is not a kubeconfig (not a mapping)")
        base = os.path.dirname(os.path.abspath(path))
        for section, key in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in doc.get(section) or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise ConfigError(f"{path}: every entry of {section} needs a name")
                if entry["name"] not in merged[section]:
                    merged[section][entry["name"]] = entry.get(key) or {}
                    where[f"{section}/{entry['name']}"] = base
        if not merged["current-context"] and doc.get("current-context"):
            merged["current-context"] = str(doc["current-context"])
    if not found:
        raise ConfigError("no such file" if len(names) <= 1 else "none of these files exists")
    return merged, where


def _current_context(merged: dict[str, Any]) -> dict[str, Any]:
    name = merged["current-context"]
    if not name:
        raise ConfigError("no current-context")
    context = merged["contexts"].get(name)
    if not isinstance(context, dict):
        raise ConfigError(f"current-context {name!r} is not one of its contexts")
    return context


def kubeconfig_namespace(paths: str | None = None) -> str | None:
    """The namespace of the kubeconfig's current context (None when it sets none)."""
    merged, _ = _load_kubeconfigs(paths or kubeconfig_paths())
    ns = _current_context(merged).get("namespace")
    return str(ns) if ns else None


def _data(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=False)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what} is not valid base64") from None


@contextmanager
def _as_file(data: bytes | None, path: str | None) -> Iterator[str | None]:
    """A file holding ``data`` (private, removed afterwards), else ``path``."""
    if data is None:
        yield path
        return
    fd, name = tempfile.mkstemp(prefix="agentctl-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield name
    finally:
        os.unlink(name)


def kubeconfig_config(paths: str | None = None) -> Config:
    """The current context of the kubeconfig(s) ``paths`` (default ``$KUBECONFIG`` / ``~/.kube/config``)."""
    merged, where = _load_kubeconfigs(paths or kubeconfig_paths())
    context = _current_context(merged)
    cluster_name = context.get("cluster")
    cluster = merged["clusters"].get(cluster_name)
    if not isinstance(cluster, dict):
        raise ConfigError(f"context {merged['current-context']!r}: cluster {cluster_name!r} is not defined")
    user_name = context.get("user")
    user = merged["users"].get(user_name) if user_name else {}
    if not isinstance(user, dict):
        raise ConfigError(f"context {merged['current-context']!r}: user {user_name!r} is not defined")
    cluster_dir = where.get(f"clusters/{cluster_name}", os.getcwd())
    user_dir = where.get(f"users/{user_name}", os.getcwd())

    def path_of(value: Any, base: str) -> str:
        return os.path.join(base, os.path.expanduser(str(value)))

    server = str(cluster.get("server") or "").rstrip("/")
    scheme = urllib.parse.urlsplit(server).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(f"cluster {cluster_name!r}: server {server!r} is not an http(s) URL")
    cfg = Config(server=server, proxy=str(cluster["proxy-url"]) if cluster.get("proxy-url") else None,
                 namespace=str(context["namespace"]) if context.get("namespace") else None)

    if user.get("token"):
        cfg.token = str(user["token"])
    elif user.get("tokenFile"):
        cfg.token_file = path_of(user["tokenFile"], user_dir)
    elif user.get("username") and user.get("password") is not None:
        cfg.basic = f"{user['username']}:{user['password']}"
    has_cert = bool(user.get("client-certificate") or user.get("client-certificate-data"))
    if not (cfg.token or cfg.token_file or cfg.basic or has_cert):
        for plugin in ("exec", "auth-provider"):
            if user.get(plugin):
                raise ConfigError(
                    f"user {user_name!r} authenticates with {'an exec plugin' if plugin == 'exec' else 'an auth-provider'}, "
                    "which agentctl does not run; use a kubeconfig with a token or a client certificate"
                )

    if scheme == "https":
        ca_data = (_data(cluster["certificate-authority-data"], "certificate-authority-data")
                   if cluster.get("certificate-authority-data") else None)
        ca_file = (path_of(cluster["certificate-authority"], cluster_dir)
                   if cluster.get("certificate-authority") and not ca_data else None)
        cfg.context = _tls_context(ca_file=ca_file, ca_data=ca_data,
                                   insecure=bool(cluster.get("insecure-skip-tls-verify")))
        if has_cert:
            cert_data = _data(user["client-certificate-data"], "client-certificate-data") \
                if user.get("client-certificate-data") else None
            key_data = _data(user["client-key-data"], "client-key-data") if user.get("client-key-data") else None
            cert_path = path_of(user["client-certificate"], user_dir) if user.get("client-certificate") else None
            key_path = path_of(user["client-key"], user_dir) if user.get("client-key") else None
            if key_data is None and key_path is None:
                raise ConfigError(f"user {user_name!r}: a client certificate needs client-key or client-key-data")
            try:
                with _as_file(cert_data, cert_path) as certfile, _as_file(key_data, key_path) as keyfile:
                    assert certfile is not None
                    cfg.context.load_cert_chain(certfile, keyfile)
            except ssl.SSLError as exc:
                raise ConfigError(f"user {user_name!r}: cannot load the client certificate: {one_line(str(exc))}") from None
            except OSError as exc:
                raise ConfigError(f"user {user_name!r}: cannot load the client certificate: "
                                  f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
    return cfg


def load_config() -> Config:
    """The in-cluster config inside a pod, else the kubeconfig."""
    return in_cluster_config() if in_cluster() else kubeconfig_config()


# --------------------------------------------------------------------------- requests


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Client:
    """JSON requests to the API server of one :class:`Config`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        proxies = {"http": config.proxy, "https": config.proxy} if config.proxy else {}
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler(proxies), _NoRedirect()]
        if config.context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=config.context))
        self._opener = urllib.request.build_opener(*handlers)

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                timeout: float = 5.0) -> Any:
        """``method path`` with a JSON body; the decoded JSON answer.

        Raises :class:`ApiError` (an HTTP error status), :class:`TransportError` (no answer),
        :class:`ResponseError` (not JSON) or :class:`ConfigError` (the token file is gone).
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.config.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", f"agentctl/{__version__}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        auth = self.config.authorization()
        if auth:
            req.add_header("Authorization", auth)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                err_body = exc.read(MAX_ERROR_BODY)
            except (OSError, http.client.HTTPException):
                err_body = b""
            finally:
                exc.close()
            raise ApiError(exc.code, str(exc.reason or ""), err_body, retry_after(exc.headers)) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = (getattr(reason, "strerror", None) or str(reason)) if isinstance(reason, OSError) else str(reason)
            raise TransportError(f"{self.config.server}: {one_line(text) or type(reason).__name__}") from None
        except TimeoutError:
            raise TransportError(f"{self.config.server}: timed out after {timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{self.config.server}: {one_line(str(exc)) or type(exc).__name__}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ResponseError(f"{self.config.server}: the answer to {method} {path} is not JSON") from None
