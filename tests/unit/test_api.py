"""controller/api.py: the defaults agree with the CRD's, the spec reading, phase rules and conditions."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pytest
import yaml

from controller import api

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "crd.yaml"
NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=5)


# ---------------------------------------------------------------- defaults: api.DEFAULTS == the CRD's

def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def crd_defaults(schema: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """(defaults of scalar fields by dotted path, defaults of object fields by dotted path)."""
    leaves: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        path = prefix + name
        if prop.get("type") == "object" and "properties" in prop:
            if "default" in prop:
                objects[path] = prop["default"]
            sub_leaves, sub_objects = crd_defaults(prop, path + ".")
            leaves.update(sub_leaves)
            objects.update(sub_objects)
        elif "default" in prop:
            leaves[path] = prop["default"]
    return leaves, objects


def test_the_crd_declares_defaults():
    leaves, _ = crd_defaults(spec_schema())
    assert leaves, "no defaults found in the CRD: the walk over its schema is broken"


def test_every_default_the_crd_declares_is_the_controllers():
    leaves, _ = crd_defaults(spec_schema())
    assert {path: api.DEFAULTS.get(path, "<missing in api.DEFAULTS>") for path in leaves} == leaves


def test_every_controller_default_is_declared_in_the_crd():
    leaves, _ = crd_defaults(spec_schema())
    assert {path: leaves.get(path, "<not declared in the CRD>") for path in api.DEFAULTS} == api.DEFAULTS


def test_objects_holding_defaults_default_to_empty_objects():
    """`cleanup: {}` must default to `{}`: otherwise an Agent without `cleanup` gets none of its
    nested defaults from the API server."""
    _, objects = crd_defaults(spec_schema())
    for path in api.DEFAULTS:
        parts = path.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            assert objects.get(parent) == {}, f"spec.{parent} has no `default: {{}}` in the CRD"


def test_default_grace_is_the_default():
    assert api.DEFAULT_GRACE_SECONDS == api.DEFAULTS["cleanup.gracePeriodSeconds"] == 5


# ---------------------------------------------------------------- AgentSpec.from_dict

def test_agent_spec_from_an_empty_spec_has_every_default():
    spec = api.AgentSpec.from_dict({})
    assert spec.image == ""
    assert spec.terminate is api.DEFAULTS["terminate"]
    assert spec.start_deadline_seconds == api.DEFAULTS["startDeadlineSeconds"]
    assert spec.cleanup.logs == api.DEFAULTS["cleanup.logs"]
    assert spec.cleanup.grace_period_seconds == api.DEFAULTS["cleanup.gracePeriodSeconds"]
    assert spec.cleanup.delay_seconds == api.DEFAULTS["cleanup.delaySeconds"]
    assert spec.cleanup.log_timeout_seconds == api.DEFAULTS["cleanup.logTimeoutSeconds"]
    assert spec.active_deadline_seconds is None and spec.ttl_seconds_after_finished is None
    assert spec.prompt is None


def test_agent_spec_defaults_equal_the_dataclass_defaults():
    assert api.AgentSpec.from_dict({"image": "x"}) == api.AgentSpec(image="x")


def test_agent_spec_from_a_spec_with_explicit_nulls():
    spec = api.AgentSpec.from_dict({"image": "x", "cleanup": None, "startDeadlineSeconds": None,
                                    "activeDeadlineSeconds": None, "ttlSecondsAfterFinished": None})
    assert spec == api.AgentSpec(image="x")
    spec = api.AgentSpec.from_dict({"image": "x", "cleanup": {"gracePeriodSeconds": None, "logs": None}})
    assert spec.cleanup == api.CleanupSpec()


def test_agent_spec_from_a_full_spec():
    spec = api.AgentSpec.from_dict({
        "image": "img:1", "terminate": True, "activeDeadlineSeconds": 60, "startDeadlineSeconds": 30,
        "ttlSecondsAfterFinished": 0, "prompt": "hello",
        "cleanup": {"logs": "Delete", "gracePeriodSeconds": 0, "delaySeconds": 7, "logTimeoutSeconds": 9},
    })
    assert spec == api.AgentSpec(image="img:1", terminate=True, active_deadline_seconds=60, start_deadline_seconds=30,
                                 ttl_seconds_after_finished=0, prompt="hello",
                                 cleanup=api.CleanupSpec(logs="Delete", grace_period_seconds=0, delay_seconds=7,
                                                         log_timeout_seconds=9))


def test_zero_values_are_kept_not_replaced_by_defaults():
    spec = api.AgentSpec.from_dict({"cleanup": {"gracePeriodSeconds": 0}, "ttlSecondsAfterFinished": 0})
    assert spec.cleanup.grace_period_seconds == 0 and spec.ttl_seconds_after_finished == 0


# ---------------------------------------------------------------- phases, times

def test_terminal_and_active_phases():
    assert api.TERMINAL_PHASES == {"Completed", "Failed", "Error", "Terminated"}
    assert api.ACTIVE_PHASES == {"Running", "Working", "Blocked"}
    assert set(api.PHASES) == api.TERMINAL_PHASES | api.ACTIVE_PHASES | {"Pending"}
    assert all(api.is_terminal(p) for p in api.TERMINAL_PHASES)
    assert not any(api.is_terminal(p) for p in (None, "", "Pending", "Running", "Working", "Blocked"))


def test_times_round_trip():
    assert api.parse_time(api.format_time(NOW)) == NOW
    assert api.format_time(NOW) == "2026-01-01T12:00:00Z"
    assert api.parse_time("2026-01-01T12:00:00.123456Z") == NOW + datetime.timedelta(microseconds=123456)
    assert api.parse_time(None) is None and api.parse_time("") is None and api.parse_time("yesterday") is None


def test_format_time_converts_to_utc():
    local = NOW.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert api.format_time(local) == "2026-01-01T12:00:00Z"


# ---------------------------------------------------------------- phase_reason

@pytest.mark.parametrize("phase,reason,expected", [
    ("Completed", "PodRunning", "Completed"),        # stale controller reason of another phase
    ("Completed", "Created", "Completed"),
    ("Failed", "QuotaExceeded", "Failed"),
    ("Working", "PodRunning", "Working"),
    ("Running", "PodRunning", "PodRunning"),
    ("Pending", "Created", "Created"),
    ("Pending", "QuotaExceeded", "QuotaExceeded"),
    ("Pending", "ImagePullBackOff", "ImagePullBackOff"),
    ("Completed", "PodSucceeded", "PodSucceeded"),
    ("Completed", "AllDone", "AllDone"),              # the agent's own reason is kept
    ("Failed", None, "Failed"),
    ("Blocked", "", "Blocked"),
    (None, None, "Pending"),
])
def test_phase_reason(phase, reason, expected):
    assert api.phase_reason(phase, reason) == expected


# ---------------------------------------------------------------- conditions_for

def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


def test_conditions_of_a_new_agent():
    conds = api.conditions_for("Pending", "Created", None, None, NOW, "The agent's pod was created.")
    assert [c["type"] for c in conds] == ["Ready", "Finished", "CleanedUp"]
    c = by_type(conds)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Created")
    assert c["Ready"]["message"] == "The agent's pod was created."
    assert (c["Finished"]["status"], c["Finished"]["reason"], c["Finished"]["message"]) == ("False", "NotFinished", "")
    assert (c["CleanedUp"]["status"], c["CleanedUp"]["reason"]) == ("False", "NotStarted")
    assert {x["lastTransitionTime"] for x in conds} == {"2026-01-01T12:00:00Z"}


def test_conditions_of_a_running_agent():
    c = by_type(api.conditions_for("Running", "PodRunning", None, None, NOW, "The agent's pod is running."))
    assert (c["Ready"]["status"], c["Ready"]["reason"], c["Ready"]["message"]) == ("True", "PodRunning", "")


@pytest.mark.parametrize("phase", sorted(api.TERMINAL_PHASES))
def test_conditions_of_a_terminal_agent(phase):
    c = by_type(api.conditions_for(phase, "Why", api.CLEANUP_PENDING, None, NOW, "what happened"))
    assert (c["Ready"]["status"], c["Ready"]["message"]) == ("False", "")
    assert (c["Finished"]["status"], c["Finished"]["reason"], c["Finished"]["message"]) == ("True", "Why",
                                                                                            "what happened")
    assert (c["CleanedUp"]["status"], c["CleanedUp"]["reason"]) == ("False", "Pending")


def test_completed_agent_with_a_stale_controller_reason_gets_its_phase_as_reason():
    """The agent reported Completed without a reason after the controller had written PodRunning."""
    c = by_type(api.conditions_for("Completed", "PodRunning", None, None, NOW, ""))
    assert c["Finished"]["reason"] == "Completed" and c["Ready"]["reason"] == "Completed"


def test_cleaned_up_condition():
    c = by_type(api.conditions_for("Completed", "PodSucceeded", api.CLEANUP_SUCCEEDED, None, NOW))
    assert (c["CleanedUp"]["status"], c["CleanedUp"]["reason"]) == ("True", "Succeeded")


def test_last_transition_time_moves_only_when_the_status_changes():
    first = api.conditions_for("Pending", "Created", None, None, NOW)
    # Same statuses, new reason and message: the transition times stay.
    second = api.conditions_for("Pending", "ImagePullBackOff", None, first, LATER, "Back-off")
    assert [c["lastTransitionTime"] for c in second] == [c["lastTransitionTime"] for c in first]
    assert by_type(second)["Ready"]["reason"] == "ImagePullBackOff"
    # Ready turns True: only Ready's time moves.
    third = api.conditions_for("Running", "PodRunning", None, second, LATER)
    t = by_type(third)
    assert t["Ready"]["lastTransitionTime"] == api.format_time(LATER)
    assert t["Finished"]["lastTransitionTime"] == t["CleanedUp"]["lastTransitionTime"] == api.format_time(NOW)
    # Terminal, then cleaned up.
    even_later = LATER + datetime.timedelta(minutes=1)
    fourth = by_type(api.conditions_for("Completed", "PodSucceeded", api.CLEANUP_PENDING, third, even_later))
    assert fourth["Ready"]["lastTransitionTime"] == fourth["Finished"]["lastTransitionTime"] == api.format_time(
        even_later)
    assert fourth["CleanedUp"]["lastTransitionTime"] == api.format_time(NOW)
    last = LATER + datetime.timedelta(minutes=2)
    fifth = by_type(api.conditions_for("Completed", "PodSucceeded", api.CLEANUP_SUCCEEDED, list(fourth.values()),
                                       last))
    assert fifth["CleanedUp"]["lastTransitionTime"] == api.format_time(last)
    assert fifth["Finished"]["lastTransitionTime"] == api.format_time(even_later)


def test_previous_condition_without_a_transition_time_gets_now():
    previous = [{"type": "Ready", "status": "False"}]
    c = by_type(api.conditions_for("Pending", None, None, previous, NOW))
    assert c["Ready"]["lastTransitionTime"] == api.format_time(NOW)


def test_condition_reasons_are_camel_case_and_messages_bounded():
    c = by_type(api.conditions_for("Failed", "ran out of-time", None, None, NOW, "x" * 5000))
    assert c["Finished"]["reason"] == "RanOutOfTime"
    assert len(c["Finished"]["message"]) == 1024
