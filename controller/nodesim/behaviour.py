"""What a pod tells the node simulator to do: annotations, container scripts, deterministic output.

Everything is read from the pod itself, so any test drives the simulated node through the API
alone (an Agent's ``spec.podTemplate.metadata.annotations`` carry these into its pod). The
annotation prefix is :data:`PREFIX` (``sim.agentcontroller.dev/``); docs/nodesim.md has the table
with examples. A malformed value never passes silently: the container then waits with reason
``CreateContainerConfigError`` and a message naming the annotation.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FOLLOW_AT_ROTATION",
    "PREFIX",
    "SCRIPT_ENV",
    "BehaviourError",
    "PodBehaviour",
    "Script",
    "generate_output",
    "parse_quantity",
    "parse_script",
    "write_chunks",
]

PREFIX = "sim.agentcontroller.dev/"
SCRIPT_ENV = "DEVCLUSTER_SCRIPT"
FOLLOW_AT_ROTATION = ("stall", "end", "reopen")

A_SCRIPT = PREFIX + "script"
A_DEFAULT_CONTAINER = PREFIX + "default-container"
A_EXIT_CODE = PREFIX + "exit-code"
A_EXIT_AFTER = PREFIX + "exit-after-seconds"
A_IGNORE_TERM = PREFIX + "ignore-term"
A_START_DELAY = PREFIX + "start-delay-seconds"
A_LOG_MAX_SIZE = PREFIX + "log-max-size"
A_FOLLOW_AT_ROTATION = PREFIX + "follow-at-rotation"
A_WAITING_REASON = PREFIX + "waiting-reason"
A_WAITING_MESSAGE = PREFIX + "waiting-message"
A_GC_AFTER_EXIT = PREFIX + "gc-after-exit"
A_BREAK_AFTER = PREFIX + "break-log-stream-after-bytes"
A_BREAK_TIMES = PREFIX + "break-log-stream-times"
A_LOSE_NODE_AFTER = PREFIX + "lose-node-after-seconds"
A_EVICT_AFTER = PREFIX + "evict-after-seconds"
A_EVICT_MESSAGE = PREFIX + "evict-message"

KNOWN = {
    A_SCRIPT, A_DEFAULT_CONTAINER, A_EXIT_CODE, A_EXIT_AFTER, A_IGNORE_TERM, A_START_DELAY, A_LOG_MAX_SIZE,
    A_FOLLOW_AT_ROTATION, A_WAITING_REASON, A_WAITING_MESSAGE, A_GC_AFTER_EXIT, A_BREAK_AFTER, A_BREAK_TIMES,
    A_LOSE_NODE_AFTER, A_EVICT_AFTER, A_EVICT_MESSAGE,
}
PER_CONTAINER = (A_SCRIPT, A_WAITING_REASON, A_WAITING_MESSAGE)

STEP_KEYS = {"log", "logB64", "stream", "write", "sleep", "exit", "report", "ignoreTerm", "loseNode"}


class BehaviourError(ValueError):
    """A malformed annotation or script (the message names it)."""


@dataclass
class Script:
    """A scripted container: ``steps`` run when it starts, ``on_term`` when SIGTERM arrives."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    on_term: list[dict[str, Any]] | None = None
    source: str = ""


@dataclass
class ContainerPlan:
    """How one container behaves."""

    script: Script | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    config_error: str | None = None      # a malformed annotation: CreateContainerConfigError


@dataclass
class PodBehaviour:
    """Everything the annotations and env of one pod ask for."""

    containers: dict[str, ContainerPlan] = field(default_factory=dict)
    default_container: str = ""
    start_delay: float | None = None
    log_max_size: int | None = None
    follow_at_rotation: str | None = None
    gc_after_exit: float | None = None
    break_after_bytes: int | None = None
    break_times: int = 1          # -1: every stream
    lose_node_after: float | None = None
    evict_after: float | None = None
    evict_message: str | None = None
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodBehaviour:
        md = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        ann: Mapping[str, str] = md.get("annotations") or {}
        containers = [c for c in spec.get("containers") or () if isinstance(c, dict)]
        names = [str(c.get("name", "")) for c in containers]
        inits = [c for c in spec.get("initContainers") or () if isinstance(c, dict)]
        b = cls()
        default = ann.get(A_DEFAULT_CONTAINER) or ann.get("kubectl.kubernetes.io/default-container") or ""
        b.default_container = default if default in names else (names[0] if names else "")
        sim = {k: v for k, v in ann.items() if k.startswith(PREFIX)}
        for key in sim:
            if key not in KNOWN and not any(key.startswith(p + ".") for p in PER_CONTAINER):
                b.errors.append(f"{key}: unknown annotation")

        def number(key: str, *, integer: bool = False, allow_true: bool = False) -> float | None:
            raw = sim.get(key)
            if raw is None:
                return None
            text = str(raw).strip()
            if allow_true and text.lower() == "true":
                return 0.0
            try:
                value = int(text) if integer else float(text)
            except ValueError:
                b.errors.append(f"{key}: {raw!r} is not a {'whole ' if integer else ''}number")
                return None
            if value < 0 and not (key == A_BREAK_TIMES and value == -1):
                b.errors.append(f"{key}: {raw!r} must not be negative")
                return None
            return float(value)

        b.start_delay = number(A_START_DELAY)
        if A_LOG_MAX_SIZE in sim:
            try:
                b.log_max_size = parse_quantity(sim[A_LOG_MAX_SIZE])
            except ValueError as exc:
                b.errors.append(f"{A_LOG_MAX_SIZE}: {exc}")
        if A_FOLLOW_AT_ROTATION in sim:
            mode = str(sim[A_FOLLOW_AT_ROTATION]).strip()
            if mode in FOLLOW_AT_ROTATION:
                b.follow_at_rotation = mode
            else:
                b.errors.append(f"{A_FOLLOW_AT_ROTATION}: {mode!r} is not one of {', '.join(FOLLOW_AT_ROTATION)}")
        b.gc_after_exit = number(A_GC_AFTER_EXIT, allow_true=True)
        brk = number(A_BREAK_AFTER, integer=True)
        b.break_after_bytes = int(brk) if brk is not None else None
        if A_BREAK_TIMES in sim:
            if str(sim[A_BREAK_TIMES]).strip().lower() == "always":
                b.break_times = -1
            else:
                t = number(A_BREAK_TIMES, integer=True)
                if t is not None:
                    b.break_times = int(t)
        b.lose_node_after = number(A_LOSE_NODE_AFTER)
        b.evict_after = number(A_EVICT_AFTER)
        b.evict_message = sim.get(A_EVICT_MESSAGE)
        exit_code = number(A_EXIT_CODE, integer=True)
        exit_after = number(A_EXIT_AFTER)
        ignore_term = str(sim.get(A_IGNORE_TERM, "")).strip().lower() == "true"
        if A_IGNORE_TERM in sim and str(sim[A_IGNORE_TERM]).strip().lower() not in ("true", "false"):
            b.errors.append(f"{A_IGNORE_TERM}: {sim[A_IGNORE_TERM]!r} is not true or false")

        for c in containers + inits:
            name = str(c.get("name", ""))
            plan = ContainerPlan()
            is_default = name == b.default_container
            raw_script = sim.get(f"{A_SCRIPT}.{name}")
            source = f"{A_SCRIPT}.{name}"
            if raw_script is None and is_default:
                raw_script, source = sim.get(A_SCRIPT), A_SCRIPT
            if raw_script is None:
                for e in c.get("env") or ():
                    if isinstance(e, dict) and e.get("name") == SCRIPT_ENV and isinstance(e.get("value"), str):
                        raw_script, source = e["value"], f"env {SCRIPT_ENV}"
            if raw_script is not None:
                try:
                    plan.script = parse_script(raw_script)
                    plan.script.source = source
                except BehaviourError as exc:
                    plan.config_error = f"{source}: {exc}"
            if is_default and plan.script is None and plan.config_error is None and (
                exit_code is not None or exit_after is not None or ignore_term
            ):
                steps: list[dict[str, Any]] = []
                if ignore_term:
                    steps.append({"ignoreTerm": True})
                if exit_after is not None:
                    steps.append({"sleep": exit_after})
                if exit_code is not None or exit_after is not None:
                    steps.append({"exit": int(exit_code or 0)})
                plan.script = Script(steps=steps, source="annotations")
            elif is_default and plan.script is not None and ignore_term:
                plan.script.steps.insert(0, {"ignoreTerm": True})
            reason = sim.get(f"{A_WAITING_REASON}.{name}") or (sim.get(A_WAITING_REASON) if is_default else None)
            if reason:
                if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", reason):
                    plan.config_error = f"{A_WAITING_REASON}: {reason!r} is not a CamelCase reason"
                else:
                    plan.waiting_reason = reason
                    plan.waiting_message = sim.get(f"{A_WAITING_MESSAGE}.{name}") or (
                        sim.get(A_WAITING_MESSAGE) if is_default else None
                    )
            if b.errors and is_default:
                plan.config_error = "; ".join(([plan.config_error] if plan.config_error else []) + b.errors)
            b.containers[name] = plan
        return b


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity of bytes (``1Mi``, ``512Ki``, ``10M``, ``2048``) as an integer."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?\s*", str(text))
    if not m:
        raise ValueError(f"{text!r} is not a quantity of bytes (e.g. 1Mi, 512Ki, 10M, 2048)")
    mult = {
        None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
        "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    }[m.group(2)]
    value = int(float(m.group(1)) * mult)
    if value <= 0:
        raise ValueError(f"{text!r} must be positive")
    return value


def parse_script(raw: str | Mapping[str, Any] | list[Any]) -> Script:
    """A script from its JSON text (or already decoded): ``{"steps": [...], "onTerm": [...]}`` or a list of steps."""
    if isinstance(raw, str):
        try:
            data: Any = json.loads(raw)
        except ValueError as e:
            raise BehaviourError(f"invalid JSON: {e}") from None
    else:
        data = raw
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict):
        raise BehaviourError("a script is a JSON object {\"steps\": [...], \"onTerm\": [...]} or a list of steps")
    unknown = set(data) - {"steps", "onTerm"}
    if unknown:
        raise BehaviourError(f"unknown script keys {sorted(unknown)}")
    steps = data.get("steps") or []
    on_term = data.get("onTerm")
    for where, lst in (("steps", steps), ("onTerm", on_term or [])):
        if not isinstance(lst, list):
            raise BehaviourError(f"{where} must be a list")
        for i, step in enumerate(lst):
            _check_step(step, f"{where}[{i}]")
    return Script(steps=list(steps), on_term=list(on_term) if on_term is not None else None)


def _check_step(step: Any, where: str) -> None:
    if not isinstance(step, dict):
        raise BehaviourError(f"{where}: a step is an object")
    unknown = set(step) - STEP_KEYS
    if unknown:
        raise BehaviourError(f"{where}: unknown step keys {sorted(unknown)}")
    if "stream" in step and step["stream"] not in ("stdout", "stderr"):
        raise BehaviourError(f"{where}: stream must be stdout or stderr")
    if "logB64" in step:
        try:
            base64.b64decode(step["logB64"])
        except (ValueError, TypeError):
            raise BehaviourError(f"{where}: logB64 is not base64") from None
    for key in ("sleep",):
        if key in step and (not isinstance(step[key], (int, float)) or isinstance(step[key], bool) or step[key] < 0):
            raise BehaviourError(f"{where}: {key} must be a non-negative number")
    if "exit" in step and (not isinstance(step["exit"], int) or isinstance(step["exit"], bool)):
        raise BehaviourError(f"{where}: exit must be an integer")
    if "write" in step:
        write_spec(step["write"], where)


def write_spec(raw: Any, where: str = "write") -> dict[str, Any]:
    """The normalised form of a ``write`` step: ``{"bytes", "lineBytes", "chunkBytes", "seed", "sleep"}``."""
    spec = {"bytes": raw} if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(spec, dict):
        raise BehaviourError(f"{where}: write is a byte count or an object")
    unknown = set(spec) - {"bytes", "lineBytes", "chunkBytes", "seed", "sleep"}
    if unknown:
        raise BehaviourError(f"{where}: unknown write keys {sorted(unknown)}")
    out = {
        "bytes": spec.get("bytes"),
        "lineBytes": spec.get("lineBytes", 100),
        "chunkBytes": spec.get("chunkBytes", 65536),
        "seed": spec.get("seed", ""),
        "sleep": spec.get("sleep", 0),
    }
    for key in ("bytes", "lineBytes", "chunkBytes"):
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (key == "chunkBytes" and v == 0):
            raise BehaviourError(f"{where}: {key} must be a {'positive' if key == 'chunkBytes' else 'non-negative'} integer")
    if not isinstance(out["seed"], str):
        raise BehaviourError(f"{where}: seed must be a string")
    if not isinstance(out["sleep"], (int, float)) or out["sleep"] < 0:
        raise BehaviourError(f"{where}: sleep must be a non-negative number")
    return out


_FILLER = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def _line(i: int, line_bytes: int, seed: bytes) -> bytes:
    head = seed + b"%09d " % i
    body_len = line_bytes - 1 - len(head)
    if body_len < 0:
        return (head + b"\n")[-line_bytes:] if line_bytes else b""
    k = i % len(_FILLER)
    filler = (_FILLER[k:] + _FILLER[:k]) * (body_len // len(_FILLER) + 1)
    return head + filler[:body_len] + b"\n"


def write_chunks(total: int, *, line_bytes: int = 100, chunk_bytes: int = 65536, seed: str = "") -> Iterator[bytes]:
    """The deterministic content of a ``write`` step, in chunks of ``chunk_bytes``.

    With ``line_bytes > 0`` it is lines of exactly that length (the last one possibly cut):
    ``<seed><line number, 9 digits> <filler>\\n``; with ``line_bytes == 0`` one endless line of
    filler (no newline at all). The same arguments always give the same bytes.
    """
    seed_b = seed.encode()
    buf = bytearray()
    made = 0
    i = 0
    while made < total:
        want = min(chunk_bytes, total - made)
        while len(buf) < want:
            if line_bytes > 0:
                buf += _line(i, line_bytes, seed_b)
                i += 1
            else:
                k = (made + len(buf)) % len(_FILLER)
                buf += (_FILLER[k:] + _FILLER[:k]) * max(1, want // len(_FILLER) + 1)
        yield bytes(buf[:want])
        del buf[:want]
        made += want


def generate_output(total: int, *, line_bytes: int = 100, seed: str = "") -> bytes:
    """All of :func:`write_chunks` at once (what a test expects a ``write`` step to produce)."""
    return b"".join(write_chunks(total, line_bytes=line_bytes, chunk_bytes=1 << 20, seed=seed))
