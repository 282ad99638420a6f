"""Local-process mode: a container whose image is under ``sim.local/`` runs as a real process.

What the process gets, as a container would:

- **argv**: the container's ``command`` + ``args`` (``$(VAR)`` references expanded like the kubelet;
  there is no image entrypoint, so one of them must be given);
- **env**: the container's ``env`` (``value``; ``valueFrom`` ``fieldRef`` for ``metadata.name``,
  ``metadata.namespace``, ``metadata.uid``, ``metadata.labels['k']``, ``metadata.annotations['k']``,
  ``spec.nodeName``, ``spec.serviceAccountName``, ``status.podIP``, ``status.hostIP``;
  ``configMapKeyRef``/``secretKeyRef``; ``resourceFieldRef``) and ``envFrom``, then
  ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` (and the ``KUBERNETES_PORT*`` family)
  pointing at the API server, ``HOSTNAME``; ``PATH`` (the simulator's, with the Python
  interpreter's directory first, unless the pod sets one) and ``HOME`` (the pod directory);
- **volumes**, written under a private pod directory (``NODESIM_POD_DIR``): ConfigMap and Secret
  volumes, projected volumes (``serviceAccountToken`` — a TokenRequest bound to the pod, refreshed
  at 80 % of its lifetime as the kubelet does — ``configMap``, ``secret``, ``downwardAPI``),
  ``downwardAPI`` and ``emptyDir`` volumes. A process cannot see the mount paths themselves, so
  every env value, ``command``/``args`` element and ``workingDir`` that is a mount path or below
  one is rewritten to the directory holding it; ``NODESIM_MOUNTS`` is the JSON map
  ``{mountPath: directory}`` and ``AGENT_SERVICEACCOUNT_DIR`` the directory of
  ``/var/run/secrets/kubernetes.io/serviceaccount`` (``agentctl`` reads the token, ``ca.crt`` and
  ``namespace`` there when it is set);
- **stdout/stderr** captured into the container's log (with rotation), **SIGTERM** on deletion to
  its process group, **SIGKILL** to the group when the grace period ends; the exit code is the
  process's (128+N when killed by signal N). A command that cannot be executed ends the container
  with reason ``StartError`` and exit code 128; a missing ConfigMap/Secret key reference keeps it
  waiting with ``CreateContainerConfigError``, as a kubelet does.

The process runs as the simulator's user and sees the simulator's file system: this mode is for
development and tests, not isolation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .logs import STDERR, STDOUT

if TYPE_CHECKING:
    from .core import NodeRuntime, SimContainer, SimPod

__all__ = ["SA_MOUNT", "SERVICEACCOUNT_DIR_ENV", "LocalProcess", "PodFiles", "start_local"]

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICEACCOUNT_DIR_ENV = "AGENT_SERVICEACCOUNT_DIR"
READ_CHUNK = 65536


class ConfigError(Exception):
    """The container cannot be created (``CreateContainerConfigError``)."""


class LocalProcess:
    """A running container process (the leader of its own process group)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pgid = proc.pid

    def signal(self, sig: int) -> None:
        """Deliver ``sig`` as a container runtime does: SIGTERM (any signal but SIGKILL) to the
        container's main process (its PID 1), SIGKILL to every process of the container (here: its
        process group). Ignores processes that are gone."""
        try:
            if sig == signal.SIGKILL:
                os.killpg(self.pgid, sig)
            elif self.proc.returncode is None:
                os.kill(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def kill_and_wait(self, timeout: float = 5.0) -> None:
        self.signal(signal.SIGKILL)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            pass


class PodFiles:
    """The pod's directory: volumes written once, tokens refreshed, removed with the pod."""

    def __init__(self, rt: NodeRuntime, p: SimPod) -> None:
        self.rt = rt
        self.pod = p
        base = rt.workdir or tempfile.gettempdir()
        os.makedirs(base, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix=f"nodesim-{p.ns}_{p.name}_", dir=base)
        self.volumes: dict[str, str] = {}
        self._ready: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.closed = False

    async def ready(self) -> None:
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._materialise())
        await asyncio.shield(self._ready)

    def close(self) -> None:
        self.closed = True
        for t in self._timers:
            t.cancel()
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ volumes

    async def _materialise(self) -> None:
        spec = self.pod.obj.get("spec") or {}
        for v in spec.get("volumes") or ():
            if not isinstance(v, dict) or not v.get("name"):
                continue
            d = os.path.join(self.root, "volumes", str(v["name"]))
            os.makedirs(d, exist_ok=True)
            self.volumes[str(v["name"])] = d
            if isinstance(v.get("configMap"), dict):
                await self._object_files(d, "configmaps", v["configMap"], v["configMap"].get("name", ""))
            elif isinstance(v.get("secret"), dict):
                await self._object_files(d, "secrets", v["secret"], v["secret"].get("secretName", ""))
            elif isinstance(v.get("downwardAPI"), dict):
                self._downward(d, v["downwardAPI"].get("items") or ())
            elif isinstance(v.get("projected"), dict):
                for src in v["projected"].get("sources") or ():
                    if not isinstance(src, dict):
                        continue
                    if isinstance(src.get("serviceAccountToken"), dict):
                        await self._token(d, src["serviceAccountToken"])
                    elif isinstance(src.get("configMap"), dict):
                        await self._object_files(d, "configmaps", src["configMap"], src["configMap"].get("name", ""))
                    elif isinstance(src.get("secret"), dict):
                        await self._object_files(d, "secrets", src["secret"], src["secret"].get("name", ""))
                    elif isinstance(src.get("downwardAPI"), dict):
                        self._downward(d, src["downwardAPI"].get("items") or ())

    async def _object_files(self, d: str, resource: str, src: Mapping[str, Any], name: str) -> None:
        obj = await self.rt.host.read_object(resource, self.pod.ns, name)
        if obj is None:
            if name == "kube-root-ca.crt":
                data: dict[str, bytes] = {"ca.crt": self.rt.host.api_endpoint().ca_pem}
            elif src.get("optional"):
                return
            else:
                kind = "configmap" if resource == "configmaps" else "secret"
                raise ConfigError(f'{kind} "{name}" not found')
        else:
            data = _object_data(resource, obj)
        items = src.get("items")
        if items:
            for it in items:
                key, path = it.get("key"), it.get("path") or it.get("key")
                if key not in data:
                    if src.get("optional"):
                        continue
                    kind = "ConfigMap" if resource == "configmaps" else "Secret"
                    raise ConfigError(f"couldn't find key {key} in {kind} {self.pod.ns}/{name}")
                _write(os.path.join(d, str(path)), data[key])
        else:
            for key, value in data.items():
                _write(os.path.join(d, key), value)

    def _downward(self, d: str, items: Any) -> None:
        for it in items:
            if not isinstance(it, dict) or not it.get("path"):
                continue
            ref = it.get("fieldRef") or {}
            value = field_value(self.pod, str(ref.get("fieldPath", ""))) if ref else ""
            _write(os.path.join(d, str(it["path"])), value.encode())

    async def _token(self, d: str, src: Mapping[str, Any]) -> None:
        audience = src.get("audience")
        expiration = int(src.get("expirationSeconds") or 3607)
        path = os.path.join(d, str(src.get("path") or "token"))
        audiences = [str(audience)] if audience else None
        token = await self.rt.host.pod_token(self.pod, audiences, expiration)
        _write(path, token.encode())
        self._schedule_refresh(path, audiences, expiration)

    def _schedule_refresh(self, path: str, audiences: list[str] | None, expiration: int) -> None:
        if self.closed:
            return

        def refresh() -> None:
            asyncio.ensure_future(self._refresh(path, audiences, expiration))

        self._timers.append(self.rt.later(expiration * 0.8, refresh))

    async def _refresh(self, path: str, audiences: list[str] | None, expiration: int) -> None:
        if self.closed or not self.rt.alive(self.pod):
            return
        try:
            token = await self.rt.host.pod_token(self.pod, audiences, expiration)
            _write(path, token.encode())
        except Exception:  # noqa: BLE001 - the old token stays; retried at the next refresh
            pass
        self._schedule_refresh(path, audiences, expiration)

    def mounts(self, c: SimContainer) -> dict[str, str]:
        """``{mountPath: local directory}`` of a container."""
        out: dict[str, str] = {}
        for m in c.spec.get("volumeMounts") or ():
            if not isinstance(m, dict) or m.get("name") not in self.volumes:
                continue
            local = self.volumes[m["name"]]
            if m.get("subPath"):
                local = os.path.join(local, str(m["subPath"]))
            out[str(m.get("mountPath", "")).rstrip("/") or "/"] = local
        return out


def _object_data(resource: str, obj: Mapping[str, Any]) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    if resource == "secrets":
        for k, v in (obj.get("data") or {}).items():
            data[k] = base64.b64decode(v or "")
        for k, v in (obj.get("stringData") or {}).items():
            data[k] = str(v).encode()
    else:
        for k, v in (obj.get("data") or {}).items():
            data[k] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v or "")
    return data


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['([^']*)'\]$")


def field_value(p: SimPod, path: str) -> str:
    """The value of a downward-API ``fieldPath``."""
    md = p.obj.get("metadata") or {}
    spec = p.obj.get("spec") or {}
    m = _LABEL_REF.match(path)
    if m:
        return str((md.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": md.get("name", ""),
        "metadata.namespace": md.get("namespace", ""),
        "metadata.uid": md.get("uid", ""),
        "spec.nodeName": p.node,
        "spec.serviceAccountName": p.sa,
        "status.podIP": p.ip,
        "status.podIPs": p.ip,
        "status.hostIP": "",
        "status.hostIPs": "",
    }
    if path in ("metadata.labels", "metadata.annotations"):
        return "\n".join(f'{k}="{v}"' for k, v in sorted((md.get(path.split(".")[1]) or {}).items()))
    return str(simple.get(path, spec.get(path, "")))


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (``$$`` escapes ``$``; unknown references stay as written)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


def rewrite(value: str, mounts: Mapping[str, str]) -> str:
    """A mount path (or a path below one) replaced by its local directory."""
    for mp in sorted(mounts, key=len, reverse=True):
        if value == mp or value.startswith(mp.rstrip("/") + "/"):
            return mounts[mp] + value[len(mp):]
    return value


async def build_env(rt: NodeRuntime, p: SimPod, c: SimContainer, files: PodFiles) -> dict[str, str]:
    """The process environment (see the module docstring)."""
    ep = rt.host.api_endpoint()
    env: dict[str, str] = {}
    for src in c.spec.get("envFrom") or ():
        if not isinstance(src, dict):
            continue
        prefix = str(src.get("prefix") or "")
        for key, resource in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            ref = src.get(key)
            if not isinstance(ref, dict):
                continue
            obj = await rt.host.read_object(resource, p.ns, str(ref.get("name", "")))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{"configmap" if resource == "configmaps" else "secret"} "{ref.get("name")}" not found')
            for k, v in _object_data(resource, obj).items():
                env[prefix + k] = v.decode("utf-8", "replace")
    for e in c.spec.get("env") or ():
        if not isinstance(e, dict) or not e.get("name"):
            continue
        name = str(e["name"])
        if "value" in e:
            env[name] = expand(str(e.get("value") or ""), env)
            continue
        vf = e.get("valueFrom") or {}
        if isinstance(vf.get("fieldRef"), dict):
            env[name] = field_value(p, str(vf["fieldRef"].get("fieldPath", "")))
            if vf["fieldRef"].get("fieldPath") in ("status.hostIP", "status.hostIPs"):
                env[name] = rt.host.host_ip
        elif isinstance(vf.get("resourceFieldRef"), dict):
            env[name] = _resource_value(c, vf["resourceFieldRef"])
        else:
            for key, resource, kind in (("configMapKeyRef", "configmaps", "ConfigMap"),
                                        ("secretKeyRef", "secrets", "Secret")):
                ref = vf.get(key)
                if not isinstance(ref, dict):
                    continue
                obj = await rt.host.read_object(resource, p.ns, str(ref.get("name", "")))
                if obj is None:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
                data = _object_data(resource, obj)
                if ref.get("key") not in data:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f"couldn't find key {ref.get('key')} in {kind} {p.ns}/{ref.get('name')}")
                env[name] = data[str(ref["key"])].decode("utf-8", "replace")
                break
    mounts = files.mounts(c)
    env = {k: rewrite(v, mounts) for k, v in env.items()}
    host, port = ep.service_host, str(ep.service_port)
    env.setdefault("KUBERNETES_SERVICE_HOST", host)
    env.setdefault("KUBERNETES_SERVICE_PORT", port)
    env.setdefault("KUBERNETES_SERVICE_PORT_HTTPS", port)
    env.setdefault("KUBERNETES_PORT", f"tcp://{host}:{port}")
    env.setdefault(f"KUBERNETES_PORT_{port}_TCP", f"tcp://{host}:{port}")
    env.setdefault(f"KUBERNETES_PORT_{port}_TCP_PROTO", "tcp")
    env.setdefault(f"KUBERNETES_PORT_{port}_TCP_PORT", port)
    env.setdefault(f"KUBERNETES_PORT_{port}_TCP_ADDR", host)
    env.setdefault("HOSTNAME", p.name)
    if "PATH" not in env:
        here = os.path.dirname(sys.executable)
        env["PATH"] = here + os.pathsep + os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("HOME", files.root)
    for k in ("LANG", "LC_ALL", "TZ"):
        if k in os.environ:
            env.setdefault(k, os.environ[k])
    env["NODESIM_POD_DIR"] = files.root
    env["NODESIM_MOUNTS"] = json.dumps(mounts, sort_keys=True)
    if SA_MOUNT in mounts:
        env.setdefault(SERVICEACCOUNT_DIR_ENV, mounts[SA_MOUNT])
    return env


def _resource_value(c: SimContainer, ref: Mapping[str, Any]) -> str:
    res = str(ref.get("resource", ""))
    kind, _, what = res.partition(".")
    value = ((c.spec.get("resources") or {}).get(kind) or {}).get(what)
    if value is None:
        value = {"cpu": "2", "memory": str(8 << 30), "ephemeral-storage": str(100 << 30)}.get(what, "0")
    if what == "cpu":
        text = str(value)
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        divisor = ref.get("divisor") or "1"
        div = float(str(divisor)[:-1]) / 1000 if str(divisor).endswith("m") else float(divisor)
        import math

        return str(max(1, math.ceil(cores / div)))
    from .behaviour import parse_quantity

    try:
        return str(parse_quantity(str(value)))
    except ValueError:
        return str(value)


async def start_local(rt: NodeRuntime, p: SimPod, c: SimContainer) -> None:
    """Run container ``c`` of pod ``p`` as a local process until it exits (the container's task)."""
    inst = c.log

    def current() -> bool:
        return rt.alive(p) and c.log is inst and not p.terminating and not p.finished

    if p.process_ctx is None:
        p.process_ctx = PodFiles(rt, p)
    files: PodFiles = p.process_ctx
    try:
        await files.ready()
        env = await build_env(rt, p, c, files)
    except ConfigError as e:
        if current():
            c.state, c.reason, c.message = "waiting", "CreateContainerConfigError", str(e)
            rt.publish(p)
        return
    except asyncio.CancelledError:
        return
    except Exception as e:  # noqa: BLE001 - a failed TokenRequest/read: the container cannot be created
        if current():
            c.state, c.reason, c.message = "waiting", "CreateContainerError", f"{type(e).__name__}: {e}"
            rt.publish(p)
        return
    if not current():
        return
    mounts = files.mounts(c)
    argv = [expand(str(a), env) for a in (c.spec.get("command") or [])] + [
        expand(str(a), env) for a in (c.spec.get("args") or [])
    ]
    argv = [rewrite(a, mounts) for a in argv]
    cwd = rewrite(str(c.spec.get("workingDir") or files.root), mounts)
    rt.mark_running(c)
    if not argv:
        rt.container_exit(p, c, 128, "StartError",
                          f"failed to start container: image {c.image} has no entrypoint and the container no command",
                          from_process=True)
        return
    os.makedirs(cwd, exist_ok=True)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
    except OSError as e:
        what = "executable file not found in $PATH" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
        rt.container_exit(
            p, c, 128, "StartError",
            "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create "
            f'failed: unable to start container process: error during container init: exec: "{argv[0]}": {what}: '
            "unknown",
            from_process=True,
        )
        return
    lp = LocalProcess(proc)
    c.proc = lp
    rt._after_change(p)      # running: status written
    if c.terminating or p.terminating:
        lp.signal(signal.SIGTERM)

    async def pump(reader: asyncio.StreamReader | None, stream: int) -> None:
        if reader is None:
            return
        while True:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                return
            inst.write(stream, chunk)

    readers = [asyncio.ensure_future(pump(proc.stdout, STDOUT)), asyncio.ensure_future(pump(proc.stderr, STDERR))]
    try:
        rc = await proc.wait()
    except asyncio.CancelledError:
        lp.signal(signal.SIGKILL)
        rc = await proc.wait()
    lp.signal(signal.SIGKILL)     # what is left of the container's processes goes with it
    done, pending = await asyncio.wait(readers, timeout=2.0)
    for t in pending:
        t.cancel()
    c.proc = None
    code = rc if rc >= 0 else 128 - rc
    rt.container_exit(p, c, code, from_process=True)
