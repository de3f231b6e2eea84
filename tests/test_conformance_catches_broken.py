"""The conformance suite fails each deliberately broken store (SPEC section 7).

One pytest run in a subprocess executes the relevant conformance tests against each
store of ``broken_stores`` and, as a control, against the correct ``MemoryStore``.
Each broken store must fail the test named for its defect (the others listed are run
too and reported), while the control passes all of them: the failures come from the
defects, not from the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

CATCHERS: dict[str, tuple[str, ...]] = {
    # broken store -> conformance tests run against it; the first one must fail.
    "CountsOneFinishPerCall": ("test_metrics_count_finished_jobs_per_minute",),
    "GroupCountsKeepRemovedJobs": (
        "test_group_counts_follow_finished_jobs_retried_removed_and_cleaned",
    ),
    "KeepsOnlyTheOptions": (
        "test_the_trace_context_survives_a_retry_and_completion",
        "test_a_flows_jobs_keep_their_trace_contexts",
    ),
    "SearchDropsTheLastJobOfAPage": (
        "test_search_pages_through_every_job_newest_first",
        "test_search_filters_by_name_and_state",
    ),
    "ForgetsParentCounter": (
        "test_children_values_in_the_parent_worker",
        "test_parent_is_released_exactly_once",
        "test_cross_queue_report_flow",
        "test_ignore_policy_runs_parent_and_lists_the_failure",
    ),
    "HandsJobsOutTwice": (
        "test_racing_workers_run_each_job_exactly_once",
        "test_parent_is_released_exactly_once",
    ),
    "IgnoresLockTokens": (
        "test_the_store_refuses_a_wrong_lock_token",
        "test_a_lock_lost_to_stall_recovery_is_refused",
        "test_expired_lock_is_recovered_and_the_job_runs_again",
    ),
    "ClaimsBlockingWakeup": ("test_an_idle_wait_wakes_when_work_arrives",),
    "ClaimsSharing": (
        "test_a_shared_store_is_tested_through_a_second_object",
        "test_objects_of_a_shared_store_see_and_take_the_same_jobs",
    ),
    "IgnoresTickCompareAndSet": (
        "test_two_store_objects_racing_for_a_tick_write_one_job",
        "test_a_fire_with_a_stale_tick_writes_nothing",
    ),
    "WritesFlowsJobByJob": (
        "test_flow_whose_middle_node_already_exists_writes_nothing",
        "test_add_bulk_of_flows_is_all_or_nothing",
    ),
    "CountsMissIgnoredChildren": (
        "test_counts_follow_complete_ignore_drop_retry_remove_leave_and_obliterate",
    ),
    "ReleasesDagDependencyTwice": (
        "test_dag_concurrent_completions_release_each_dependent_exactly_once",
        "test_dag_a_diamond_runs_its_shared_job_once_and_the_sink_sees_both_values",
    ),
    "RetriesCancelledJobs": (
        "test_a_cancel_request_wins_over_whatever_the_worker_reports",
        "test_a_running_handler_is_cancelled_and_the_job_never_retried[raises-an-error]",
    ),
    "ParkCountsAnAttempt": (
        "test_step_job_a_parked_job_counts_no_attempt_and_holds_no_lock",
        "test_step_job_map_reduce_runs_end_to_end",
    ),
    "HandsOutItsOwnRecords": ("test_a_record_handed_out_is_the_callers_own",),
    "ReleasesActiveParents": ("test_step_job_waiting_without_pending_children_returns_at_once",),
    "RetryForgetsRunningParents": (
        "test_step_job_retrying_a_failed_child_of_a_running_parent_puts_it_back",
    ),
    "WritesDeduplicatedNodes": (
        "test_flow_dedup_leaf_of_a_live_job_becomes_a_dependency",
        "test_flow_dedup_racing_flows_write_one_job",
    ),
    "DeduplicatesByReadThenWrite": (
        "test_racing_adds_of_one_id_write_one_job",
        "test_a_live_job_holds_its_id_until_it_finishes",
    ),
    "CapsEachTakeNotTheQueue": (
        "test_a_take_stops_at_the_limit_until_a_job_finishes",
        "test_workers_on_two_store_objects_keep_to_the_limit",
        "test_racing_takes_never_pass_the_limit",
    ),
    "TakesBeforeCompleting": (
        "test_complete_and_take_takes_the_room_its_completions_make",
        "test_complete_and_take_takes_the_parent_its_completion_released",
    ),
    "DropsTheManualRateLimit": (
        "test_a_limited_queue_takes_nothing_until_then",
        "test_rate_limited_error_hands_the_job_back_unattempted",
    ),
    "ForgetsJobGroups": (
        "test_groups_are_taken_round_robin_whatever_their_backlog",
        "test_group_counts_cover_each_group_in_every_state",
    ),
    "ServesLanesByName": (
        "test_a_single_job_of_another_group_overtakes_a_backlog",
        "test_the_rotation_goes_on_from_one_take_to_the_next",
    ),
    "KeepsGroupLimitsOnlyForShow": (
        "test_a_group_concurrency_holds_each_group_apart",
        "test_workers_on_two_store_objects_keep_each_group_to_its_limit",
        "test_a_group_rate_limit_holds_each_group_apart",
    ),
    "TrustsTheDagsShape": ("test_a_malformed_dag_is_refused_and_nothing_written",),
    "PagesSkipTheChildAfterTheCursor": (
        "test_pages_walk_every_child_once_in_the_order_added",
        "test_a_page_deep_in_a_big_flow",
    ),
}

MODULE = textwrap.dedent(
    """
    import pytest

    import broken_stores
    from conveyor_core.conformance import StoreConformance
    from conveyor_stores import MemoryStore


    def _suite_for(make_store, fail_fast):
        class Suite(StoreConformance):
            timeout = 3.0 if fail_fast else 10.0

            @pytest.fixture
            async def store(self):
                async with make_store() as store:
                    yield store

        return Suite


    TestControl = _suite_for(MemoryStore, fail_fast=False)
    {classes}
    """
)


def _outcome(case: ElementTree.Element) -> str:
    for kind in ("failure", "error", "skipped"):
        if case.find(kind) is not None:
            return kind
    return "passed"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """``{class: {test: outcome}}`` of one run of the selected tests."""
    directory = tmp_path_factory.mktemp("broken")
    classes = "\n".join(
        f"Test{name} = _suite_for(broken_stores.{name}, fail_fast=True)" for name in CATCHERS
    )
    module = directory / "test_broken_conformance.py"
    module.write_text(MODULE.format(classes=classes), encoding="utf-8")
    (directory / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    selected = sorted({test for tests in CATCHERS.values() for test in tests})
    node_ids = [f"{module}::TestControl::{test}" for test in selected]
    node_ids += [
        f"{module}::Test{name}::{test}" for name, tests in CATCHERS.items() for test in tests
    ]
    report = directory / "report.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(TESTS), *filter(None, [env.get("PYTHONPATH")])]
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *node_ids,
            "-c",
            str(directory / "pytest.ini"),
            "--rootdir",
            str(directory),
            "-p",
            "anyio",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={report}",
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.exists(), f"the suite did not run:\n{completed.stdout}\n{completed.stderr}"
    found: dict[str, dict[str, str]] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        suite = case.get("classname", "").rsplit(".", 1)[-1]
        found.setdefault(suite, {})[case.get("name", "")] = _outcome(case)
    return found


CONTROL_SKIPS = {
    # MemoryStore does not claim to be shared, so the suite skips what checks sharing.
    "test_a_shared_store_is_tested_through_a_second_object": "skipped",
    "test_objects_of_a_shared_store_see_and_take_the_same_jobs": "skipped",
}


def test_the_suite_passes_the_correct_store(outcomes: dict[str, dict[str, str]]) -> None:
    control = outcomes.get("TestControl", {})
    selected = {test for tests in CATCHERS.values() for test in tests}
    assert set(control) == selected
    failing = {test: outcome for test, outcome in control.items() if outcome != "passed"}
    assert failing == CONTROL_SKIPS, "the control MemoryStore must pass every selected test"


@pytest.mark.parametrize("broken", list(CATCHERS))
def test_the_suite_catches_the_broken_store(
    outcomes: dict[str, dict[str, str]], broken: str
) -> None:
    results = outcomes.get(f"Test{broken}", {})
    assert set(results) == set(CATCHERS[broken]), f"not every test ran for {broken}"
    caught_by = sorted(test for test, outcome in results.items() if outcome in ("failure", "error"))
    key_test = CATCHERS[broken][0]
    print(f"{broken} is caught by: {', '.join(caught_by) or 'nothing'}")
    assert key_test in caught_by, (
        f"{broken} should fail {key_test}; it was caught by {caught_by or 'no test'}"
    )
