"""The steps of impactx.owen on their own: a round's pops and a popped node's pushes, as shap does them."""

import numpy as np
import torch
from conftest import tiny_model

from impactx.owen import QUEUE_FIELDS, credit_leaves, empty_queue, owen_values, pop_round, push_children


def queue(rows):
    """rows: (slot, node, prio, tie); mask, lo, hi, w follow the row number so the rows can be traced."""
    q = empty_queue()
    for i, (slot, node, prio, tie) in enumerate(rows):
        row = {"slot": slot, "node": node, "mask": i, "lo": 0.0, "hi": float(i), "w": 1.0, "prio": prio, "tie": tie}
        q = {k: np.append(q[k], row[k]).astype(q[k].dtype) for k in QUEUE_FIELDS}
    return q


def test_pop_round_takes_each_images_best_nodes_within_its_batch_and_budget():
    q = queue([
        (1, 10, -0.5, 0.0),
        (0, 11, -0.1, 0.0),
        (0, 12, -0.9, 0.0),
        (0, 13, -0.9, -1.0),  # same priority as node 12: the smaller tie draw pops first
        (1, 14, -0.2, 0.0),
        (0, 15, -0.3, 0.0),
    ])  # fmt: skip
    # batch_size 6 → 3 pops per image; image 1 has 2 evaluations left → 1 pop
    popped, waiting = pop_round(q, evals_left=np.array([100, 2]), batch_size=6)
    assert popped["slot"].tolist() == [0, 0, 0, 1]  # sorted by image, then in pop order
    assert popped["node"].tolist() == [13, 12, 15, 10]
    assert sorted(waiting["node"].tolist()) == [11, 14]
    assert len(popped["node"]) + len(waiting["node"]) == len(q["node"])
    odd, _ = pop_round(q, evals_left=np.array([3, 0]), batch_size=6)  # 3 evaluations left: 2 pops (4 masks)
    assert odd["node"].tolist() == [13, 12]


def test_push_children_are_shaps_four_pushes():
    popped = {"slot": np.array([2]), "node": np.array([40]), "mask": np.array([7]), "lo": np.array([0.1]),
              "hi": np.array([0.9]), "w": np.array([0.5])}  # fmt: skip
    ties = np.array([[0.1, 0.2, 0.3, 0.4]])
    c = push_children(popped, m10=np.array([8]), m01=np.array([9]), f10=np.array([0.6]), f01=np.array([0.2]),
                      ties=ties, left=np.array([20]), right=np.array([21]))  # fmt: skip
    assert c["slot"].tolist() == [2, 2, 2, 2]
    assert c["node"].tolist() == [20, 21, 20, 21]  # (L, m00) (R, m00) (L, m01) (R, m10)
    assert c["mask"].tolist() == [7, 7, 9, 8]
    assert np.allclose(c["lo"], [0.1, 0.1, 0.2, 0.6]) and np.allclose(c["hi"], [0.6, 0.2, 0.9, 0.9])
    assert np.allclose(c["w"], 0.25) and np.array_equal(c["tie"], ties.ravel())
    assert np.allclose(c["prio"], -np.abs(c["hi"] - c["lo"]) * 0.25)


def test_leaves_are_credited_at_once_and_nodes_are_queued():
    children = {"slot": np.array([0, 0, 1]), "node": np.array([3, 9, 3]), "mask": np.zeros(3, np.int64),
                "lo": np.array([0.0, 0.0, 0.5]), "hi": np.array([0.4, 1.0, 0.25]), "w": np.array([0.5, 0.5, 2.0]),
                "prio": np.zeros(3), "tie": np.zeros(3)}  # fmt: skip
    credit = np.zeros((2, 11))
    queued = credit_leaves(credit, children, n_features=6)  # nodes 0..5 are pixels (leaves)
    assert queued["node"].tolist() == [9]
    assert credit[0, 3] == 0.2 and credit[1, 3] == -0.5 and credit.sum() == 0.2 - 0.5


def test_partition_tree_is_cached_per_shape_and_rebuilt_when_unreadable(tmp_path, monkeypatch):
    from impactx.owen import PartitionTree

    monkeypatch.setenv("IMPACTX_CACHE", str(tmp_path))
    built = PartitionTree(3, 8, 8)
    (cached,) = tmp_path.glob("partition-shap*-3x8x8.npz")
    loaded = PartitionTree(3, 8, 8)
    for name in ("left", "right", "size", "indptr", "indices_chw"):
        assert np.array_equal(getattr(built, name), getattr(loaded, name)), name
    assert (built.members_t != loaded.members_t).nnz == 0
    cached.write_bytes(b"truncated")
    again = PartitionTree(3, 8, 8)
    assert np.array_equal(again.indices_chw, built.indices_chw) and cached.stat().st_size > 100


class CountingModel(torch.nn.Module):
    """The model, with the compiled path's fixed batch (`batch`), counting the rows of every call."""

    def __init__(self, model, batch: int):
        super().__init__()
        self.model, self.batch, self.calls = model, batch, []

    def forward(self, x):
        self.calls.append(len(x))
        return self.model(x)


def test_forward_passes_are_full_batches_and_waiting_rows_change_no_value():
    """Rows past a round's last whole forward batch wait for the next round: every pass is exactly `batch`
    rows but a few (the first rounds, when the trees are small, and the last), and the maps equal those
    of one forward pass per round."""
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = np.arange(12) % 4
    kw = {"max_evals": 300, "batch_size": 50, "masker": "blur(4,4)", "seeds": [[0, i] for i in range(12)], "pool": 5}
    one_pass = owen_values(tiny_model(), x, y, forward_batch=10**6, **kw)  # a round is one pass, never waits
    model = CountingModel(tiny_model(), batch=64)
    maps = owen_values(model, x, y, **kw)
    assert np.abs(maps - one_pass).max() <= 1e-5 * np.abs(one_pass).max()
    partial = [n for n in model.calls if n != 64]
    assert sum(model.calls) == 12 * 300 and len(partial) <= 6 and all(n < 64 for n in partial), model.calls
