"""Partition SHAP (Owen values) for many images at once, with the same values as shap.PartitionExplainer.

shap explains one image at a time: a priority queue of partition-tree nodes, popped in batches of
`batch_size` masks, each mask applied by a per-row numpy call. Here every image of a pool runs that same
recursion in lockstep rounds, and one round's masks of all images go through the model together:

- round: each image pops its ceil(batch_size / 2) highest-priority nodes, exactly the nodes shap's next
  batch would pop (leaves never enter a batch and their credit does not depend on when they are popped,
  so they are credited as soon as they appear);
- masks are boolean rows on the model's device, built by OR-ing the parent's mask with a partition-tree
  box, and applied with torch.where (blur) or one OpenCV inpaint per row in threads (inpaint_*);
- priority ties are broken, as in shap, by a normal draw per pushed node, from one RandomState per
  image seeded with `seeds[i]` (np.random.seed(seeds[i]) before shap's call gives the same draws);
- a finished image frees its slot for the next one, so forward batches stay full and memory is fixed:
  pool × (max_evals + 1) × C·H·W bytes of masks;
- every forward pass is full: a round's rows past its last whole forward batch wait for the next round,
  and their images (which pop nothing meanwhile) go on when all their rows have values. Images are
  independent, so when a row is evaluated changes no value; a compiled model's fixed batch shape then
  runs no padding rows but in the last passes.

Only the model outputs can differ from shap's, by float rounding of different batch compositions.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from impactx import inference
from impactx.io import save_npz


def _cache_dir() -> Path:
    return Path(os.environ.get("IMPACTX_CACHE", Path.home() / ".cache" / "impactx"))


def partition_tree(c: int, h: int, w: int):
    """shap's Image-masker clustering of a C×H×W input and the leaf set of every node (CSR: rows are tree
    nodes, columns features in HWC order). Building them JIT-compiles shap's numba code: 4.4 s a process
    here, for every SHAP and baseline-evaluation stage. They depend only on shap's version and the shape,
    so they are cached on disk ($IMPACTX_CACHE, default ~/.cache/impactx)."""
    from importlib.metadata import version

    import scipy.sparse

    path = _cache_dir() / f"partition-shap{version('shap')}-{c}x{h}x{w}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                csr = scipy.sparse.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
                return z["clustering"], csr
        except (OSError, ValueError, KeyError):  # unreadable: build it again below
            pass
    import shap
    from shap.utils._masked_model import make_masks

    clustering = shap.maskers.Image("blur(1,1)", shape=(h, w, c)).clustering
    csr = make_masks(clustering).tocsr()
    save_npz(path, clustering=clustering, data=csr.data, indices=csr.indices, indptr=csr.indptr, shape=csr.shape)
    return clustering, csr


class PartitionTree:
    """shap's Image-masker partition tree of a C×H×W input, with leaf sets as CSR over CHW feature order."""

    def __init__(self, c: int, h: int, w: int):
        clustering, csr = partition_tree(c, h, w)
        m = h * w * c
        self.left = np.concatenate([np.full(m, -1), clustering[:, 0].astype(np.int64)])
        self.right = np.concatenate([np.full(m, -1), clustering[:, 1].astype(np.int64)])
        self.size = np.concatenate([np.ones(m), clustering[:, 3]])
        self.root = 2 * m - 2
        hwc_to_chw = np.arange(m).reshape(c, h, w).transpose(1, 2, 0).ravel()
        self.members_t = csr.T.tocsr()  # features (HWC) × nodes, for pushing credit down
        self.indptr = csr.indptr.astype(np.int64)
        self.indices_chw = hwc_to_chw[csr.indices].astype(np.int64)
        self.hwc_to_chw = hwc_to_chw

    def columns(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) pairs of the features under each node, rows numbered 0..len(nodes)-1."""
        starts, lens = self.indptr[nodes], self.indptr[nodes + 1] - self.indptr[nodes]
        rows = np.repeat(np.arange(len(nodes)), lens)
        offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return rows, self.indices_chw[np.repeat(starts, lens) + offsets]

    def leaf_values(self, credit: np.ndarray) -> np.ndarray:
        """Push node credit down to the features (shap's lower_credit): a feature gets credit/size of
        every node above it. Returns values in CHW order."""
        per_feature = self.members_t @ (credit / self.size)
        out = np.empty_like(per_feature)
        out[self.hwc_to_chw] = per_feature
        return out


def _blur_backgrounds(images_hwc: np.ndarray, kernel: tuple[int, int]) -> np.ndarray:
    import cv2

    return np.stack([cv2.blur(x, kernel).reshape(x.shape) for x in images_hwc])  # OpenCV drops a grey image's channel


def _parse_masker(masker: str):
    """("blur", (k, k)) or ("inpaint_telea" | "inpaint_ns", None); the name is checked by impactx.attribution.shap_partition.check_masker."""
    if masker.startswith("blur("):
        return "blur", tuple(int(k) for k in masker[5:-1].split(","))
    return masker, None


class _Inpainter:
    """shap's inpaint masking: pixels with any channel masked out are filled by cv2.inpaint (radius 3)
    on the 8-bit image; a fully masked image becomes its mean colour. One OpenCV call per row, in threads."""

    def __init__(self, method: str, threads: int):
        import cv2

        self.cv2, self.flag = cv2, getattr(cv2, method.upper())
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def __call__(self, masks: torch.Tensor, images_u8: np.ndarray, slots: np.ndarray, chw) -> torch.Tensor:
        c, h, w = chw
        hidden = np.asarray((~masks.cpu().numpy()).reshape(len(masks), c, h, w).any(1), dtype=np.uint8)

        def one(i):
            img = images_u8[slots[i]]
            if hidden[i].all():
                return np.broadcast_to(img.astype(np.float32).mean((0, 1)), img.shape).astype(np.float32)
            return self.cv2.inpaint(img, hidden[i], 3, self.flag).reshape(img.shape).astype(np.float32)  # grey: H×W

        rows = list(self.pool.map(one, range(len(masks))))
        return torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2).reshape(len(masks), -1).div_(255.0)

    def close(self):
        self.pool.shutdown()


# ---------------------------------------------------------------- the frontier: queued nodes of every image
# One array per field: slot (which image), node (partition-tree node), mask (row of the node's m00 in the
# mask store), lo, hi (f00, f11), w (weight), prio, tie (the heap keys, as in shap's priority queue).
QUEUE_FIELDS = ("slot", "node", "mask", "lo", "hi", "w", "prio", "tie")


def empty_queue() -> dict:
    return {k: np.zeros(0, np.int64 if k in ("slot", "node", "mask") else np.float64) for k in QUEUE_FIELDS}


HELD_FIELDS = (*QUEUE_FIELDS, "m10", "m01", "f10", "f01")  # a popped node, its two masks and their values


def empty_held() -> dict:
    return {k: np.zeros(0, np.int64 if k in ("slot", "node", "mask", "m10", "m01") else np.float64)
            for k in HELD_FIELDS}  # fmt: skip


def _take(queue: dict, which) -> dict:
    return {k: v[which] for k, v in queue.items()}


def credit_nodes(credit: np.ndarray, nodes: dict) -> None:
    """A node that is not split further keeps (f11 − f00)·w, as shap's dvalues[ind] += (f11 - f00) * weight."""
    np.add.at(credit, (nodes["slot"], nodes["node"]), (nodes["hi"] - nodes["lo"]) * nodes["w"])


def pop_round(queue: dict, evals_left: np.ndarray, batch_size: int) -> tuple[dict, dict]:
    """Each image's next batch, as shap pops it: its best nodes by (priority, tie), 2 masks each, while
    the batch is under batch_size and under the image's evaluations left. Returns (popped, waiting);
    popped is sorted by slot, then in pop order."""
    order = np.lexsort((queue["tie"], queue["prio"], queue["slot"]))
    sorted_slot = queue["slot"][order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_slot, sorted_slot, side="left")  # place in its image
    pops = (np.minimum(batch_size, evals_left) + 1) // 2
    picked = order[rank < pops[sorted_slot]]
    waiting = np.ones(len(order), bool)
    waiting[picked] = False
    return _take(queue, picked), _take(queue, waiting)


def push_children(popped: dict, m10, m01, f10, f01, ties: np.ndarray, left, right) -> dict:
    """shap's four pushes per popped node (m00, f00, f11, w): (m00,f00,f10,L) (m00,f00,f01,R) (m01,f01,f11,L)
    (m10,f10,f11,R), each with weight w/2, priority −|hi − lo|·w/2 and the tie draw of `ties` (n×4)."""
    m00, f00, f11 = popped["mask"], popped["lo"], popped["hi"]
    children = {
        "slot": np.repeat(popped["slot"], 4),
        "node": np.stack([left, right, left, right], 1).ravel(),
        "mask": np.stack([m00, m00, m01, m10], 1).ravel(),
        "lo": np.stack([f00, f00, f01, f10], 1).ravel(),
        "hi": np.stack([f10, f01, f11, f11], 1).ravel(),
        "w": np.repeat(popped["w"] / 2, 4),
        "tie": ties.ravel(),
    }
    children["prio"] = -np.abs(children["hi"] - children["lo"]) * children["w"]
    return children


def credit_leaves(credit: np.ndarray, children: dict, n_features: int) -> dict:
    """Credit the children that are leaves (a leaf's credit does not depend on when shap pops it) and
    return the others, which join the queue."""
    leaf = children["node"] < n_features
    credit_nodes(credit, _take(children, leaf))
    return _take(children, ~leaf)


class _Pool:
    """`pool` images explained side by side: their masks (a boolean store on the device), pixels,
    backgrounds, targets, tie-break generators and credit. A finished image frees its slot."""

    def __init__(self, model, images, targets, seeds, *, kind, kernel, budget, pool, forward_batch, device, progress):
        n, c, h, w = images.shape
        self.model, self.images, self.targets, self.seeds = model, images, targets, seeds
        self.chw, self.m, self.budget, self.pool = (c, h, w), c * h * w, budget, pool
        self.tree = PartitionTree(c, h, w)
        self.capacity = budget + 3  # masks one image can need: 0 = none kept, 1 = all kept, then <= budget + 1
        self.forward_batch, self.device, self.progress = forward_batch, device, progress
        self.images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)
        self.inpaint = None
        if kind == "blur":
            self.backgrounds = torch.from_numpy(_blur_backgrounds(self.images_hwc, kernel)).permute(0, 3, 1, 2)
        else:
            self.inpaint = _Inpainter(kind, threads=os.cpu_count() or 1)
            self.images_u8 = np.empty((pool, h, w, c), np.uint8)
        self.image = np.full(pool, -1)  # image index in each slot, -1 when free
        self.used = np.zeros(pool, np.int64)  # masks used in the slot's part of the store
        self.evals = np.zeros(pool, np.int64)
        self.new = np.zeros(pool, bool)  # admitted this round: evaluate f(background), f(x)
        self.rng: list[np.random.RandomState | None] = [None] * pool
        self.credit = np.zeros((pool, 2 * self.m - 1))
        self.x = torch.zeros(pool, self.m, device=device)
        self.bg = torch.zeros(pool, self.m, device=device)
        self.store = torch.zeros(pool * self.capacity, self.m, dtype=torch.bool, device=device)
        self.target = torch.zeros(pool, dtype=torch.long, device=device)
        self.masked = torch.empty(forward_batch, self.m, device=device)  # one forward chunk's masked images
        self.queue = empty_queue()
        self.held = empty_held()  # popped nodes whose image still waits for some of its rows' values
        self.out = np.empty((n, c, h, w), np.float32)
        self.next_image = 0

    def finish(self) -> None:
        """Images whose budget is spent or whose queue is empty: queued nodes keep their credit, and the
        credit is pushed down to the pixels."""
        queued = np.bincount(self.queue["slot"], minlength=self.pool) > 0
        finished = (self.image >= 0) & ~self.new & ~self.waiting() & ((self.evals >= self.budget) | ~queued)
        if not finished.any():
            return
        leave = finished[self.queue["slot"]]
        credit_nodes(self.credit, _take(self.queue, leave))
        self.queue = _take(self.queue, ~leave)
        for s in np.flatnonzero(finished):
            self.out[self.image[s]] = self.tree.leaf_values(self.credit[s]).reshape(self.chw)
            self.credit[s], self.image[s] = 0, -1
            if self.progress is not None:
                self.progress.update(1)

    def waiting(self) -> np.ndarray:
        """Slots whose popped nodes are held for values: they pop nothing and do not finish."""
        return np.bincount(self.held["slot"], minlength=self.pool) > 0

    def evals_left(self) -> np.ndarray:
        return np.where(self.waiting(), 0, self.budget - self.evals)

    def admit(self) -> bool:
        """The next images into free slots; False when nothing is left to explain."""
        for s in np.flatnonzero(self.image < 0)[: len(self.out) - self.next_image]:
            i, self.next_image = self.next_image, self.next_image + 1
            self.image[s], self.used[s], self.evals[s], self.new[s] = i, 2, 0, True
            self.rng[s] = np.random.RandomState(self.seeds[i])
            self.x[s] = self.images[i].reshape(-1).to(self.device)
            if self.inpaint is None:
                self.bg[s] = self.backgrounds[i].reshape(-1).to(self.device)
            else:
                self.images_u8[s] = np.rint(self.images_hwc[i] * 255).astype(np.uint8)
            self.target[s] = int(self.targets[i])
            self.store[s * self.capacity] = False
            self.store[s * self.capacity + 1] = True
        return bool((self.image >= 0).any())

    def build_masks(self, popped: dict) -> tuple[np.ndarray, np.ndarray]:
        """Store rows m10 = m00 + left box and m01 = m00 + right box of every popped node, in shap's
        batch order."""
        p_slot, p_node = popped["slot"], popped["node"]
        counts = np.bincount(p_slot, minlength=self.pool)
        first = np.searchsorted(p_slot, np.arange(self.pool))
        m10 = p_slot * self.capacity + self.used[p_slot] + 2 * (np.arange(len(p_slot)) - first[p_slot])
        m01 = m10 + 1
        if len(p_slot):
            dev = self.device
            rows = np.stack([m10, m01], 1).ravel()
            parents = torch.from_numpy(np.repeat(popped["mask"], 2)).to(dev)
            self.store.index_copy_(0, torch.from_numpy(rows).to(dev), self.store.index_select(0, parents))
            r, cols = self.tree.columns(np.stack([self.tree.left[p_node], self.tree.right[p_node]], 1).ravel())
            flat = torch.from_numpy(rows[r] * self.m + cols).to(dev)  # (row, column) of each box feature
            self.store.view(-1).index_fill_(0, flat, True)
        self.used += 2 * counts
        self.evals += 2 * counts
        return m10, m01

    def forward(self, rows_slot: np.ndarray, rows_mask: np.ndarray) -> np.ndarray:
        """p_target of the masked images (store rows rows_mask of slots rows_slot), in forward_batch chunks.
        Rows come grouped by slot: each run of one slot's rows is masked against its image and background
        by broadcasting, with no per-row copy of either."""
        c, h, w = self.chw
        masks = torch.from_numpy(rows_mask).to(self.device)
        targets = self.target.index_select(0, torch.from_numpy(rows_slot).to(self.device))
        result = torch.empty(len(rows_slot), dtype=torch.float64)
        for lo in range(0, len(rows_slot), self.forward_batch):
            hi = min(lo + self.forward_batch, len(rows_slot))
            keep = self.store.index_select(0, masks[lo:hi])
            if self.inpaint is None:
                x, chunk = self.masked[: hi - lo], rows_slot[lo:hi]
                starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
                for a, b in zip(starts, np.r_[starts[1:], len(chunk)], strict=True):
                    torch.where(keep[a:b], self.x[chunk[a]], self.bg[chunk[a]], out=x[a:b])
            else:
                x = self.inpaint(keep, self.images_u8, rows_slot[lo:hi], self.chw).to(self.device)
            p = torch.softmax(self.model(x.view(-1, c, h, w)).float(), dim=1)
            result[lo:hi] = p.gather(1, targets[lo:hi, None])[:, 0].cpu()
        return result.numpy()

    def evaluate_round(self, popped: dict, m10: np.ndarray, m01: np.ndarray):
        """New images' f(background) and f(x), the held nodes' pairs, then this round's popped pairs, in
        whole forward batches: rows past the last whole batch wait for the next round. Returns the new
        slots, their (f(background), f(x)), and the popped nodes of every image whose pairs all have
        values (sorted by slot, in pop order), with their m10, m01, f10, f01."""
        new, cap, fb = np.flatnonzero(self.new), self.capacity, self.forward_batch
        nan = np.full(len(m10), np.nan)
        nodes = {k: np.concatenate([self.held[k], v]) for k, v in {**popped, "m10": m10, "m01": m01, "f10": nan,
                                                                  "f01": nan}.items()}  # fmt: skip
        todo = np.flatnonzero(np.isnan(nodes["f10"]))
        rows_slot = np.concatenate([np.repeat(new, 2), np.repeat(nodes["slot"][todo], 2)])
        rows_mask = np.concatenate([np.stack([new * cap, new * cap + 1], 1).ravel(),
                                    np.stack([nodes["m10"][todo], nodes["m01"][todo]], 1).ravel()])  # fmt: skip
        first = 2 * len(new) + 2 * int(np.isnan(self.held["f10"]).sum())  # never wait twice
        cut = len(rows_slot) if len(rows_slot) < fb else max(len(rows_slot) // fb * fb, first)
        cut -= cut % 2  # pairs stay together
        values = self.forward(rows_slot[:cut], rows_mask[:cut])
        pairs = values[2 * len(new) :].reshape(-1, 2)
        nodes["f10"][todo[: len(pairs)]], nodes["f01"][todo[: len(pairs)]] = pairs.T
        hold = np.isin(nodes["slot"], nodes["slot"][np.isnan(nodes["f10"])])
        self.held = _take(nodes, hold)
        ready = _take(nodes, ~hold)  # a slot's nodes are all held or all popped this round: stable sort
        ready = _take(ready, np.argsort(ready["slot"], kind="stable"))
        return new, values[: 2 * len(new)].reshape(-1, 2), ready

    def tie_draws(self, popped: dict) -> np.ndarray:
        """One normal draw per pushed child, from each image's own RandomState, in shap's push order."""
        p_slot = popped["slot"]
        counts = np.bincount(p_slot, minlength=self.pool)
        first = np.searchsorted(p_slot, np.arange(self.pool))
        ties = np.empty((len(p_slot), 4))
        for s in np.flatnonzero(counts):
            rng = self.rng[s]
            assert rng is not None  # a slot with nodes holds an image
            ties[first[s] : first[s] + counts[s]] = rng.randn(4 * counts[s]).reshape(-1, 4)
        return ties

    def enqueue(self, children: dict, new: np.ndarray, f_new: np.ndarray) -> None:
        """Children that are not leaves, and the roots of newly admitted images (priority 0, tie 0, as in shap)."""
        roots = {
            "slot": new,
            "node": np.full(len(new), self.tree.root),
            "mask": new * self.capacity,
            "lo": f_new[:, 0],
            "hi": f_new[:, 1],
            "w": np.ones(len(new)),
            "prio": np.zeros(len(new)),
            "tie": np.zeros(len(new)),
        }
        self.queue = {k: np.concatenate([self.queue[k], children[k], roots[k]]) for k in QUEUE_FIELDS}
        self.new[:] = False

    def close(self) -> None:
        if self.inpaint is not None:
            self.inpaint.close()


@torch.no_grad()
def owen_values(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets,
    *,
    max_evals: int,
    batch_size: int,
    masker: str,
    seeds,
    pool: int = 16,
    forward_batch: int | None = None,
    device: torch.device | None = None,
    progress=None,
) -> np.ndarray:
    """Owen values of softmax(model(x))[target] for N×C×H×W images in [0, 1]. Returns N×C×H×W float32."""
    kind, kernel = _parse_masker(masker)
    device = device or next(model.parameters()).device
    images_pool = _Pool(
        model, images, np.asarray(targets, dtype=np.int64), list(seeds), kind=kind, kernel=kernel,
        budget=max_evals - 2,  # shap spends 2 evaluations on f(background) and f(x)
        pool=pool, forward_batch=forward_batch or getattr(model, "batch", None) or inference.batch_size(device),
        device=device,
        progress=progress,
    )  # fmt: skip
    p, tree = images_pool, images_pool.tree
    try:
        while True:
            p.finish()
            if not p.admit():
                break
            popped, p.queue = pop_round(p.queue, p.evals_left(), batch_size)
            m10, m01 = p.build_masks(popped)
            new, f_new, ready = p.evaluate_round(popped, m10, m01)
            left, right = tree.left[ready["node"]], tree.right[ready["node"]]
            children = push_children(ready, ready["m10"], ready["m01"], ready["f10"], ready["f01"],
                                     p.tie_draws(ready), left, right)  # fmt: skip
            p.enqueue(credit_leaves(p.credit, children, p.m), new, f_new)
    finally:
        p.close()
    return p.out
