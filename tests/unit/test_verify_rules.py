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


def _report(artifacts: int, differs: int = 0):
    from runner.jobs.verify import Findings, VerifyReport

    verdict, findings = Verdict(), Findings()
    for klass, n in (("ok", 3), ("rule_artifact", artifacts), ("differs", differs)):
        for i in range(n):
            detail = {"team_id": 1, "person_uuid": str(UUID(int=i)), "job_version": 2}
            verdict.add(klass, detail)
            if klass != "ok":
                findings.add(klass, detail)
    return VerifyReport("job-1", "succeeded", True, "original", verdict, findings)


def test_verify_human_output_shows_counts_and_a_sample_per_class():
    """`runner verify --sample N`: N persons per class, then how many more; counts always."""
    import io

    from runner.commands.verify import _write_human

    out = io.StringIO()
    _write_human(out, _report(artifacts=7, differs=1), sample=2)
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "job job-1 (succeeded): 11 persons updated by the job, diff recomputed with semantics original"
    )
    assert "  rule_artifact          7" in lines and "  differs                1" in lines
    assert sum(line.startswith("  rule_artifact: {") for line in lines) == 2
    assert sum(line.startswith("  differs: {") for line in lines) == 1
    assert "  ... 5 more rule_artifact (--sample N shows up to N per class; --output json lists all)" in lines
    assert not any("more differs" in line for line in lines)
    assert lines[-1] == "verify: FAILED"

    counts_only = io.StringIO()
    _write_human(counts_only, _report(artifacts=7), sample=0)
    text = counts_only.getvalue()
    assert "rule_artifact: {" not in text and "... 7 more rule_artifact" in text
    assert text.endswith("verify: ok\n")


def test_verify_json_lists_every_person_not_ok():
    import io

    from runner.commands.verify import _write_json

    out = io.StringIO()
    _write_json(out, _report(artifacts=SAMPLE + 3, differs=1))
    document = json.loads(out.getvalue())
    assert (document["ok"], document["rule_artifact"], document["differs"]) == (3, SAMPLE + 3, 1)
    assert len(document["samples"]["rule_artifact"]) == SAMPLE  # capped, as before
    assert [p["class"] for p in document["persons"]] == ["rule_artifact"] * (SAMPLE + 3) + ["differs"]
    assert document["persons"][0] == {
        "class": "rule_artifact",
        "team_id": 1,
        "person_uuid": str(UUID(int=0)),
        "job_version": 2,
    }
