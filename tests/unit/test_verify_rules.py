"""`runner verify`'s classification (`runner.rules.verify`). Pure: no stack needed."""

from __future__ import annotations

import json
from uuid import UUID

import pytest

from runner.rules.verify import (
    SAMPLE,
    Verdict,
    artifact_only,
    artifact_suspects,
    classify,
    latest_versions,
)

P = UUID(int=1)
KEY = (7, P)


def remaining(set_=None, set_once=(), unset=()):
    return {"baseline_version": 5, "set": dict(set_ or {}), "set_once": list(set_once), "unset": list(unset)}


@pytest.mark.parametrize(
    ("ch", "diff", "pg", "expected"),
    [
        (None, None, 5, "not_ingested"),
        ((4, 0, "{}"), None, 5, "not_ingested"),
        ((5, 0, "{}"), None, 5, "ok"),
        ((6, 0, "{}"), None, 6, "ok"),
        ((5, 0, "{}"), remaining(set_={"a": '"x"'}), 6, "changed_since"),
        ((5, 1, "{}"), remaining(set_={"a": '"x"'}), 5, "changed_since"),
        ((6, 0, "{}"), remaining(set_={"a": '"x"'}), 5, "postgres_behind"),
        ((5, 0, '{"a": "x"}'), remaining(set_={"a": '"x"'}), 5, "rule_artifact"),
        ((5, 0, '{"a": "y"}'), remaining(set_={"a": '"x"'}), 5, "differs"),
    ],
)
def test_classes(ch, diff, pg, expected):
    klass, detail = classify(KEY, 5, ch, diff, pg, None)
    assert klass == expected
    assert detail["team_id"] == 7 and detail["person_uuid"] == str(P) and detail["job_version"] == 5
    assert detail["diff"] == diff and detail["postgres_version"] == pg


def test_replay_teams_have_no_rule_artifacts():
    klass, _ = classify(KEY, 5, (5, 0, '{"a": "x"}'), remaining(set_={"a": '"x"'}), 5, None, frozenset({7}))
    assert klass == "differs"


def test_artifacts_of_the_original_rules():
    # A SET whose value equals the stored one as JSON (1.0 == 1).
    assert artifact_only(remaining(set_={"n": "1.0"}), json.dumps({"n": 1}), None)
    # A SET on a key the job filled with SET_ONCE.
    assert artifact_only(remaining(set_={"a": '"new"'}), "{}", {"a": {"set_once"}})
    # SET_ONCE/UNSET of keys the job itself touched, but not of others.
    assert artifact_only(remaining(set_once=["a"], unset=["b"]), "{}", {"a": {"set"}, "b": {"unset"}})
    assert not artifact_only(remaining(unset=["c"]), "{}", {"a": {"set"}})
    # A state that is not a JSON object counts as empty.
    assert not artifact_only(remaining(set_={"a": '"x"'}), "not json", None)


def test_latest_versions_and_suspects():
    q = UUID(int=2)
    latest = latest_versions([(1, 7, P, 4), (2, 7, P, 6), (3, 8, q, 2)])
    assert latest == {(7, P): 6, (8, q): 2}
    ch = {(7, P): (6, 0, "{}"), (8, q): (3, 0, "{}")}
    diff = {(7, P): remaining(), (8, q): remaining()}
    assert artifact_suspects(latest, ch, diff, {(7, P): 6}) == [(7, P)]
    assert artifact_suspects(latest, ch, diff, {(7, P): 7}) == []


def test_verdict_keeps_samples_of_the_unexpected_classes_only():
    verdict = Verdict()
    for i in range(SAMPLE + 5):
        verdict.add("differs", {"i": i})
        verdict.add("ok", {"i": i})
    assert verdict.counts == {"differs": SAMPLE + 5, "ok": SAMPLE + 5}
    assert len(verdict.samples["differs"]) == SAMPLE and verdict.samples["ok"] == []
    assert verdict.failed
    assert not Verdict().failed
