"""python -m my_agent — the example agent run by `agentctl run --` (see ../Dockerfile).

It reads the prompt the controller mounted, reports `Working` with progress through `agentctl
report` (only its own Agent's status is writable with its credentials), prints its answer, and
exits 0; `agentctl run` then reports `Completed`, and the controller archives this output and tears
the pod down.
"""

import os
import subprocess
import time


def report(phase: str, progress: int, message: str) -> None:
    if os.environ.get("AGENT_NAME"):
        subprocess.run(["agentctl", "report", "--phase", phase, "--progress", str(progress), "--message", message],
                       check=False)


def main() -> None:
    prompt_file = os.environ.get("AGENT_PROMPT_FILE") or ""
    prompt = open(prompt_file).read() if prompt_file and os.path.exists(prompt_file) else "(no prompt)"
    print(f"prompt: {prompt.strip()}", flush=True)
    for step, progress in (("reading", 30), ("thinking", 70)):
        report("Working", progress, step)
        print(f"{step}...", flush=True)
        time.sleep(1)
    print("answer: 42", flush=True)


if __name__ == "__main__":
    main()
