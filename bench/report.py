"""Outputs: the JSON result, a Markdown table of the figures against their targets, a PNG plot of
the latency distributions. Every output names the backend that produced it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (label, JSON path, target text, check(value) -> bool)
TARGETS: list[tuple[str, str, str, Callable[[Any], bool]]] = [
    ("burst: all cleaned, seconds", "burst.seconds", "<= 10 s (1000 agents)", lambda v: v <= 10.0),
    ("burst: cleanups per second", "burst.cleanups_per_second", ">= 100 /s", lambda v: v >= 100.0),
    ("burst: terminal -> pod DELETE p99", "burst.teardown_p99_ms", "(reported)", lambda v: True),
    ("idle: terminal -> pod DELETE p50", "idle.teardown_p50_ms", "<= 50 ms", lambda v: v <= 50.0),
    ("idle: terminal -> pod DELETE p99", "idle.teardown_p99_ms", "<= 500 ms", lambda v: v <= 500.0),
    ("API requests per cleanup", "api.requests_per_cleanup", "<= 10", lambda v: v <= 10.0),
    ("controller RSS, 1 000 Agents", "scale.rss_mb_1k", "(reported)", lambda v: True),
    ("controller RSS, 10 000 Agents", "scale.rss_mb_10k", "<= 200 MB", lambda v: v <= 200.0),
    ("sweep of ~10 000 managed objects", "scale.sweep_seconds_10k", "<= 2 s, one list per kind",
     lambda v: v <= 2.0),
]


def get(result: dict[str, Any], path: str) -> Any:
    node: Any = result
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def strip_samples(node: Any) -> Any:
    """The JSON keeps per-agent samples out of the summary objects (they go to `samples`)."""
    if isinstance(node, dict):
        return {k: strip_samples(v) for k, v in node.items() if k != "_samples"}
    if isinstance(node, list):
        return [strip_samples(v) for v in node]
    return node


def backend_label(result: dict[str, Any]) -> str:
    if result.get("backend") == "emulator":
        return "backend: emulator (in-process controller.devcluster; controller in its own process)"
    if result.get("backend") == "control-plane":
        return ("backend: control-plane (the project's kube-apiserver, etcd, kube-controller-manager and "
                f"kube-scheduler, simulated nodes; {result.get('server', '?')})")
    if result.get("backend") == "ship-endpoint":
        return ("backend: ship-endpoint (the controller's ship endpoint in this process, agentctl run's shipper "
                "in agent processes, TokenReview stubbed; no API server)")
    return f"backend: cluster ({result.get('server', '?')})"


def markdown(result: dict[str, Any]) -> str:
    m = result.get("machine") or {}
    lines = [f"# agent-controller bench — {result.get('date')} — {m.get('hostname')}", "",
             (f"**{backend_label(result)}**, {'quick (smoke) sizes' if result.get('quick') else 'full sizes'}. "
              f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gb')} GB, "
              f"Python {m.get('python')}, kopf {m.get('kopf')}, commit {m.get('git')}. "
              f"Calibration (a fixed CPU workload; lower is faster): {m.get('calibration_ms_start')} ms at the "
              f"start, {m.get('calibration_ms_end')} ms at the end."), "",
             "| figure | value | target | met |", "|---|---:|---|:-:|"]
    for label, path, target, check in TARGETS:
        value = get(result, path)
        if value is None:
            lines.append(f"| {label} | n/a | {target} | – |")
            continue
        met = "–" if target == "(reported)" else ("yes" if check(value) else "**no**")
        lines.append(f"| {label} | {value} | {target} | {met} |")
    anchor = result.get("anchor") or {}
    if anchor:
        lines += ["", f"## Anchor: {anchor.get('agents')} Jobs drained by kube-controller-manager "
                      "(TTL-after-finished + garbage collector) vs as many Agents drained by us", "",
                  f"**ratio (ours ÷ theirs, objects per second): {anchor.get('ratio')}**", "",
                  "| | ours | theirs |", "|---|---:|---:|"]
        for label, key in (("last finish → last object gone, s", "seconds"), ("objects per second", "per_second"),
                           ("API requests", "requests"), ("controller CPU seconds", "cpu_seconds"),
                           ("API server CPU seconds", "apiserver_cpu_seconds"), ("all gone", "all_gone")):
            lines.append(f"| {label} | {anchor.get('ours_' + key)} | {anchor.get('theirs_' + key)} |")
        lines += ["", f"Theirs: {anchor.get('theirs_flags')}."]
    ship = result.get("ship") or {}
    if ship:
        lines += ["", f"## Ship: {ship.get('agents')} agents under agentctl run, {ship.get('mib_each')} MiB each, at once",
                  "", "| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in ship.items() if k != "backend"]
    chaos = result.get("chaos") or {}
    if chaos:
        f = chaos.get("figures") or {}
        lines += ["", f"## Chaos: {f.get('agents')} agents, seed {f.get('seed')} — "
                      f"**{'the promise held' if chaos.get('ok') else str(len(chaos.get('violations') or [])) + ' violations'}**",
                  "", f"Endings: {f.get('endings')}.", "",
                  f"Faults injected: {f.get('faults')}; controller SIGKILLs {f.get('kills')} "
                  f"({f.get('kills_mid_cleanup')} mid-cleanup). Active {f.get('active_seconds')} s, quiescence "
                  f"{f.get('quiescence_seconds')} s (the leader's phase gauge agreeing {f.get('phase_gauge_settled_seconds')} s "
                  f"later), {f.get('agents_per_second')} agents/s overall.", "",
                  "| invariant / count | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted((chaos.get("counts") or {}).items())]
        for note in f.get("notes") or []:
            lines.append(f"\nNote: {note}")
        for v in (chaos.get("violations") or [])[:50]:
            lines.append(f"- {v}")
    burst = result.get("burst") or {}
    idle = result.get("idle") or {}
    if burst or idle:
        lines += ["", "## Latency distributions (ms)", "",
                  "| scenario | interval | n | p50 | p90 | p99 | max |", "|---|---|---:|---:|---:|---:|---:|"]
        for name, block in (("burst", burst), ("idle", idle)):
            for key, label in (("terminal_to_pod_delete_ms", "terminal → pod DELETE issued"),
                               ("terminal_to_verified_ms", "terminal → verifiedNoLeaks")):
                d = block.get(key)
                if d:
                    lines.append(f"| {name} | {label} | {d['n']} | {d['p50']} | {d['p90']} | {d['p99']} | "
                                 f"{d['max']} |")
            for path, sub in (block.get("by_path") or {}).items():
                for key, label in (("terminal_to_pod_delete_ms", "→ pod DELETE"),
                                   ("terminal_to_verified_ms", "→ verified")):
                    d = sub.get(key)
                    if d and d.get("n"):
                        lines.append(f"| {name} ({path}) | {label} | {d['n']} | {d['p50']} | {d['p90']} | "
                                     f"{d['p99']} | {d['max']} |")
    api = result.get("api") or {}
    if api:
        lines += ["", f"## API requests ({api.get('source')})", "",
                  (f"Per lifecycle: **{api.get('requests_per_lifecycle')}** "
                   f"(creation {api.get('requests_per_creation')}); per cleanup: "
                   f"**{api.get('requests_per_cleanup')}** (report path {api.get('requests_per_cleanup_report')}, "
                   f"pod path — {result.get('pod_path')} — {api.get('requests_per_cleanup_pod')})."), ""]
        for key, title in (("cleanup_report_by_request", "cleanup, agent reported Completed"),
                           ("cleanup_pod_by_request", f"cleanup, {result.get('pod_path', 'pod exited')}"),
                           ("creation_by_request", "creation until Running")):
            rows = api.get(key) or {}
            if rows:
                lines += [f"| {title} | per agent |", "|---|---:|"]
                lines += [f"| `{k}` | {v} |" for k, v in rows.items()]
                lines.append("")
    scale = result.get("scale") or {}
    if scale.get("steps"):
        lines += ["## Scale (idle Agents present)", "",
                  ("RSS of the controller process: idle (11 s after its last request), after a full sweep, and "
                   "the peak while the step's Agents were being created."), "",
                  ("| Agents | RSS MB idle | RSS MB after a sweep | peak while creating | sweep objects | sweep s | "
                   "sweep requests |"),
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for s in scale["steps"]:
            lines.append(f"| {s['agents']} | {s['rss_mb_idle']} | {s['rss_mb_after_sweep']} | "
                         f"{s.get('rss_mb_peak_while_creating')} | {s.get('sweep_objects')} | {s.get('sweep_seconds')} | "
                         f"{s.get('sweep_requests')} |")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], samples: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = [(f"{scenario}: {label}", samples.get(scenario, {}).get(key) or [])
              for scenario in ("idle", "burst")
              for key, label in (("terminal_to_pod_delete_s", "terminal → pod DELETE"),
                                 ("terminal_to_verified_s", "terminal → verifiedNoLeaks"))]
    series = [(label, [v * 1000 for v in values]) for label, values in series if values]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for label, values in series:
        ordered = sorted(values)
        n = len(ordered)
        axes[0].plot(ordered, [(i + 1) / n for i in range(n)], label=f"{label} (n={n})")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("latency (ms, log scale)")
    axes[0].set_ylabel("fraction of agents")
    axes[0].set_title("Cumulative distribution")
    axes[0].grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    if series:
        axes[1].boxplot([v for _, v in series], vert=False, whis=(1, 99), showfliers=True)
        axes[1].set_yticks(range(1, len(series) + 1), [label for label, _ in series], fontsize=8)
        axes[1].set_xscale("log")
    axes[1].set_xlabel("latency (ms, log scale); whiskers p1..p99")
    axes[1].set_title("Spread")
    axes[1].grid(True, which="both", alpha=0.3)
    m = result.get("machine") or {}
    burst = result.get("burst") or {}
    fig.suptitle(f"agent-controller cleanup latency — {backend_label(result)}\n"
                 f"{result.get('date')} · {m.get('hostname')} · {m.get('cpus')} CPUs · "
                 f"burst {burst.get('agents', '-')} agents in {burst.get('seconds', '-')} s · "
                 f"idle {(result.get('idle') or {}).get('agents', '-')} agents · commit {m.get('git')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(result: dict[str, Any], samples: dict[str, Any], json_path: Path) -> dict[str, str]:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path = json_path.with_suffix(".md")
    png_path = json_path.with_suffix(".png")
    outputs = {"json": str(json_path), "markdown": str(md_path)}
    if plot(result, samples, png_path):
        outputs["plot"] = str(png_path)
    result = dict(result, outputs=outputs)
    body = dict(result, samples={k: {kk: [round(x, 6) for x in vv] for kk, vv in v.items()}
                                 for k, v in samples.items()})
    json_path.write_text(json.dumps(body, indent=2) + "\n")
    md_path.write_text(markdown(result))
    return outputs
