"""impactx.schedule: the critical path and the fan-out flow's predicted wall time from stage times."""

import json

import pytest

from impactx import ImpactXError
from impactx.schedule import StageTime, critical_path, fill, load_times, record_times, sibling, simulate, table

# check_params (writes nothing: in the checkout) → fetch → two seeds' train → one evaluate over both → compare
# (outputs git keeps: in the checkout)
UPS = {
    "check_params": [],
    "fetch": [],
    "train@0": ["fetch"],
    "train@1": ["fetch"],
    "evaluate": ["train@0", "train@1"],
    "compare": ["evaluate"],
}
CACHEABLE = set(UPS) - {"check_params", "compare"}
T = {
    "check_params": StageTime(2.0),
    "fetch": StageTime(4.0, 1.0),
    "train@0": StageTime(30.0, 1.0),
    "train@1": StageTime(20.0, 1.0),
    "evaluate": StageTime(10.0, 1.0),
    "compare": StageTime(3.0),
}


def test_the_critical_path_is_the_longest_chain_restores_included():
    length, path = critical_path(UPS, T)
    assert path == ["fetch", "train@0", "evaluate", "compare"]
    assert length == 5 + 31 + 11 + 3


def test_one_worker_is_the_sum_and_more_workers_replay_the_flows_schedule():
    assert simulate(UPS, T, CACHEABLE, 1) == 69.0  # every stage in the checkout, nothing restored
    # check_params holds the loop 2 s; fetch 2→6; both trains start at 6 (the slots need no restore):
    # train@1 ends 26, train@0 36; evaluate 36→46; compare waits for the checkout to take in the four
    # stages (one batch, 4 s) →50, and runs there →53
    assert simulate(UPS, T, CACHEABLE, 2) == 53.0
    assert simulate(UPS, T, CACHEABLE, 8) == 53.0  # no more parallelism in the DAG than two
    without_compare = {s: u for s, u in UPS.items() if s != "compare"}
    assert simulate(without_compare, T, CACHEABLE, 2) == 50.0  # the last batch at the end
    assert simulate(UPS, T, CACHEABLE, 8) >= critical_path(UPS, T)[0]


def test_a_stage_without_a_time_takes_its_familys_and_none_stops_with_one_line():
    assert sibling("train@impactx-3") == "train@impactx" and sibling("baseline@4") == "baseline"
    assert sibling("evaluate_control@impactx_lambda0") == "evaluate_control@impactx_lambda0"  # not a seed
    five = fill(["train@0", "train@1", "train@4"], {"train@0": StageTime(30.0), "train@1": StageTime(20.0)})
    assert five["train@4"] == StageTime(30.0)  # the first measured of its family
    with pytest.raises(ImpactXError, match="no measured time for stage.s. compare: run the flow once"):
        fill(["train@0", "compare"], {"train@0": StageTime(1.0)})


def test_recorded_times_keep_a_skipped_stages_last_real_time(tmp_path):
    path = tmp_path / ".dvc" / "tmp" / "times.json"
    record_times(path, {"fetch": {"seconds": 4.0, "restore": 1.0}, "train@0": {"seconds": 30.0}})
    record_times(path, {"train@0": {"seconds": 33.0, "restore": 1.0}})  # fetch skipped this time
    assert load_times(path) == {"fetch": StageTime(4.0, 1.0), "train@0": StageTime(33.0, 1.0)}
    assert "critical path 39 s: fetch → train@0" in table({"fetch": [], "train@0": ["fetch"]}, load_times(path), set())
    path.write_text(json.dumps({"stages": {"fetch": {"secs": 1}}}))
    with pytest.raises(ImpactXError, match="not a stage-times file"):
        load_times(path)
    with pytest.raises(ImpactXError, match="no stage times recorded: run the flow once"):
        load_times(tmp_path / "none.json")
