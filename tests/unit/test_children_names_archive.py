"""Pure builders, naming rules and the archive writer."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from controller import archive as archive_mod
from controller import children, names
from controller.archive import Archive, ArchiveError

UID = "0b0c0d0e-1111-2222-3333-444455556666"


def agent(**spec):
    return {"metadata": {"name": "a1", "namespace": "ns", "uid": UID},
            "spec": {"image": "img:1", **spec}}


def test_child_names_short_and_long():
    assert names.pod_name("a1") == "a1"
    assert names.prompt_configmap_name("a1") == "a1-prompt"
    assert names.credentials_name("a1") == "a1-agent"
    long = "x" * 80
    for fn, suffix in ((names.pod_name, ""), (names.prompt_configmap_name, "-prompt"),
                       (names.credentials_name, "-agent")):
        value = fn(long)
        assert len(value) <= 63 and value.endswith(suffix) and names.is_dns_label(value)
        assert value == fn(long)                      # deterministic
        assert fn(long) != fn("x" * 79 + "y")         # distinct names stay distinct


def test_label_value_truncated_and_valid():
    value = names.label_value("a" * 62 + "-b")
    assert len(value) <= 63 and not value.endswith("-")
    labels = names.child_labels("n" * 100, UID)
    assert labels[names.AGENT_LABEL] == "n" * 63
    assert labels[names.MANAGED_BY_LABEL] == "agent-controller"


def test_pod_is_restricted_and_carries_agent_env():
    pod = children.pod(agent(prompt="hi", cleanup={"gracePeriodSeconds": 7}, env=[{"name": "X", "value": "1"}]))
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["terminationGracePeriodSeconds"] == 7
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = spec["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["AGENT_NAME"] == "a1" and env["AGENT_NAMESPACE"] == "ns" and env["AGENT_UID"] == UID
    assert env["AGENT_PROMPT_FILE"] == "/var/run/agent/prompt.txt" and env["AGENT_GRACE_SECONDS"] == "7"
    assert env["X"] == "1"
    assert c["volumeMounts"][0]["readOnly"] is True and c["volumeMounts"][0]["mountPath"] == "/var/run/agent"
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True
    assert pod["metadata"]["labels"][names.AGENT_UID_LABEL] == UID


def test_pod_template_merged_under_generated_pod():
    template = {"metadata": {"labels": {"team": "x", names.MANAGED_BY_LABEL: "evil"}},
                "spec": {"nodeSelector": {"gpu": "yes"}, "restartPolicy": "Always", "runtimeClassName": "gvisor",
                         "volumes": [{"name": "scratch", "emptyDir": {}}],
                         "containers": [{"name": "sidecar", "image": "side:1"},
                                        {"name": "agent", "image": "ignored", "workingDir": "/w"}]}}
    pod = children.pod(agent(prompt="p", podTemplate=template))
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["nodeSelector"] == {"gpu": "yes"}
    assert spec["runtimeClassName"] == "gvisor"
    assert {v["name"] for v in spec["volumes"]} == {"scratch", "agent-prompt"}
    by = {c["name"]: c for c in spec["containers"]}
    assert by["agent"]["image"] == "img:1" and by["agent"]["workingDir"] == "/w" and "sidecar" in by
    assert pod["metadata"]["labels"]["team"] == "x"
    assert pod["metadata"]["labels"][names.MANAGED_BY_LABEL] == "agent-controller"


@pytest.mark.parametrize("template", [
    {"spec": {"volumes": "nope"}},
    {"spec": {"containers": [{"image": "no-name"}]}},
    {"spec": {"containers": [{"name": "side"}]}},
    {"spec": {"tolerations": {"a": 1}}},
    {"spec": "x"},
])
def test_broken_pod_template_is_invalid_spec(template):
    with pytest.raises(children.InvalidSpec):
        children.pod(agent(podTemplate=template))


def test_role_grants_only_own_agent_status():
    role = children.role(agent())
    assert role["rules"] == [
        {"apiGroups": ["agentcontroller.dev"], "resources": ["agents"], "resourceNames": ["a1"], "verbs": ["get"]},
        {"apiGroups": ["agentcontroller.dev"], "resources": ["agents/status"], "resourceNames": ["a1"],
         "verbs": ["get", "patch"]},
    ]
    binding = children.role_binding(agent())
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "a1-agent", "namespace": "ns"}]
    assert children.prompt_configmap(agent()) is None
    assert children.prompt_configmap(agent(prompt="x"))["data"] == {"prompt.txt": "x"}


def test_archive_commit_layout_manifest_and_exactly_once(tmp_path):
    arch = Archive(tmp_path)
    final = arch.agent_dir("ns", "a1", UID)
    pending = arch.begin(final)
    pending.open("agent.log").write(b"\xff\x00line\n")
    pending.write_file("agent.json", b"{}")
    result = pending.commit()
    assert final == tmp_path / "ns" / "a1" / UID
    assert sorted(os.listdir(final)) == ["MANIFEST.json", "agent.json", "agent.log"]
    manifest = json.loads((final / "MANIFEST.json").read_text())
    entry = {f["name"]: f for f in manifest["files"]}["agent.log"]
    assert entry["size"] == 7 and entry["sha256"] == hashlib.sha256(b"\xff\x00line\n").hexdigest()
    assert result.files[-1] == f"ns/a1/{UID}/MANIFEST.json"
    assert result.bytes == sum((final / f).stat().st_size for f in os.listdir(final))
    # A second writer never replaces a complete archive.
    again = arch.begin(final)
    again.write_file("agent.log", b"other")
    second = again.commit()
    assert second.already_existed and (final / "agent.log").read_bytes() == b"\xff\x00line\n"
    assert [p.name for p in final.parent.iterdir()] == [UID]   # no temporary leftovers


def test_archive_not_writable(tmp_path):
    # A path under a regular file cannot be created, even by root (chmod does not stop root).
    (tmp_path / "not-a-dir").write_text("")
    root = tmp_path / "not-a-dir" / "archive"
    with pytest.raises(ArchiveError) as info:
        Archive(root).begin(Archive(root).agent_dir("ns", "a1", UID))
    assert info.value.reason == "not_writable"


@pytest.mark.parametrize("ns,name,uid", [("../x", "a", UID), ("ns", "../../etc", UID), ("ns", "a", "../u"),
                                         ("ns", "a/b", UID)])
def test_archive_rejects_path_traversal(tmp_path, ns, name, uid):
    with pytest.raises(ArchiveError):
        Archive(tmp_path).agent_dir(ns, name, uid)


def test_log_filenames():
    assert archive_mod.log_filename("agent", False) == "agent.log"
    assert archive_mod.log_filename("agent", True) == "agent.previous.log"
    with pytest.raises(ArchiveError):
        archive_mod.log_filename("../x", False)
