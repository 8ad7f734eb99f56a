"""The per-task time limit: a task computing longer than its limit is stopped (its worker restarted), counted
as a failed attempt "timed out after N s", retried per the retry policy and then failed; the batch goes on.
Real LocalCluster workers running the toy stages of tests/pipeline_toy.py."""
from __future__ import annotations

import pytest

from incloud_kernel.pipeline import runs
from test_pipeline_engine import engine_site, run, tasks_of  # noqa: F401

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_stage_limit_stops_the_overrunning_input_and_the_others_finish(engine_site) -> None:  # type: ignore
    # The site has no limit (0); the stage's own 3 s limit applies to it only.
    engine_site.config.compute.task_timeout = 0
    run_id, state = run(engine_site, "timed")
    assert state == runs.FAILED
    tasks = {(t.stage, t.participant, t.series_id): t for t in tasks_of(engine_site, run_id)}
    slow = [t for (stage, who, _), t in tasks.items() if stage == "brainvol" and who == "P01"]
    assert slow and all(t.state == runs.FAILED and t.error == "TimeoutError: timed out after 3 s"
                        and t.attempts == engine_site.config.compute.max_attempts for t in slow)
    others = [t for (stage, who, _), t in tasks.items() if who != "P01"]
    assert others and all(t.state == runs.DONE for t in others)  # the batch went on, restarts and all
    assert all(t.state == runs.FAILED and "upstream" in t.error
               for (stage, who, _), t in tasks.items() if stage == "summary" and who == "P01")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_site_limit_and_its_per_stage_override(engine_site) -> None:  # type: ignore[no-untyped-def]
    compute = engine_site.config.compute
    compute.task_timeout, compute.max_attempts = 1, 1  # "linger" pauses 300 s per input: over the site's limit
    run_id, state = run(engine_site, "linger")
    assert state == runs.FAILED
    assert {t.error for t in tasks_of(engine_site, run_id)} == {"TimeoutError: timed out after 1 s"}
    compute.stage_timeouts = {"brainvol": 0}  # the site lifts the limit for this stage: 2 s pauses pass
    run_id, state = run(engine_site, "slow")
    assert state == runs.DONE


def test_a_negative_limit_is_refused_with_one_line(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.config import get_config
    from incloud_kernel.errors import ConfigError

    monkeypatch.setenv("INCLOUD_COMPUTE_TASK_TIMEOUT", "-1")
    with pytest.raises(ConfigError, match="task_timeout"):
        get_config(reload=True)
    monkeypatch.delenv("INCLOUD_COMPUTE_TASK_TIMEOUT")
    assert get_config(reload=True).compute.task_timeout == 6 * 3600
