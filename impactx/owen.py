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
  pool × (max_evals + 1) × C·H·W bytes of masks.

Only the model outputs can differ from shap's, by float rounding of different batch compositions.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


class PartitionTree:
    """shap's Image-masker partition tree of a C×H×W input, with leaf sets as CSR over CHW feature order."""

    def __init__(self, c: int, h: int, w: int):
        import shap

        masker = shap.maskers.Image("blur(1,1)", shape=(h, w, c))
        clustering = masker.clustering
        m = h * w * c
        self.left = np.concatenate([np.full(m, -1), clustering[:, 0].astype(np.int64)])
        self.right = np.concatenate([np.full(m, -1), clustering[:, 1].astype(np.int64)])
        self.size = np.concatenate([np.ones(m), clustering[:, 3]])
        self.root = 2 * m - 2
        from shap.utils._masked_model import make_masks

        csr = make_masks(clustering).tocsr()  # rows: tree nodes; columns: features in HWC order
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

    return np.stack([cv2.blur(x, kernel) for x in images_hwc])


def _parse_masker(masker: str):
    """("blur", (k, k)) or ("inpaint_telea" | "inpaint_ns", None); the name is checked by shap_maps.check_masker."""
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
        hidden = (~masks.cpu().numpy()).reshape(len(masks), c, h, w).any(1).astype(np.uint8)

        def one(i):
            img = images_u8[slots[i]]
            if hidden[i].all():
                return np.broadcast_to(img.astype(np.float32).mean((0, 1)), img.shape).astype(np.float32)
            return self.cv2.inpaint(img, hidden[i], 3, self.flag).astype(np.float32)

        rows = list(self.pool.map(one, range(len(masks))))
        return torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2).reshape(len(masks), -1).div_(255.0)

    def close(self):
        self.pool.shutdown()


QUEUE_FIELDS = ("slot", "node", "mask", "lo", "hi", "w", "prio", "tie")


def _take(queue: dict, which) -> dict:
    return {k: v[which] for k, v in queue.items()}


def _credit(credit: np.ndarray, nodes: dict) -> None:
    """A node that is not split further keeps (f11 − f00)·w, as shap's dvalues[ind] += (f11 - f00) * weight."""
    np.add.at(credit, (nodes["slot"], nodes["node"]), (nodes["hi"] - nodes["lo"]) * nodes["w"])


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
    n, c, h, w = images.shape
    m = c * h * w
    tree = PartitionTree(c, h, w)
    budget = max_evals - 2  # shap spends 2 evaluations on f(background) and f(x)
    capacity = budget + 3  # masks one image can need: 0 = none kept, 1 = all kept, then <= budget + 1
    forward_batch = forward_batch or (8192 if device.type == "cuda" else 512)
    targets = np.asarray(targets, dtype=np.int64)
    seeds = list(seeds)

    images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)
    inpaint = None
    if kind == "blur":
        backgrounds = torch.from_numpy(_blur_backgrounds(images_hwc, kernel)).permute(0, 3, 1, 2)
    else:
        inpaint = _Inpainter(kind, threads=os.cpu_count() or 1)
        images_u8 = np.empty((pool, h, w, c), np.uint8)

    # per slot
    slot_image = np.full(pool, -1)
    slot_used = np.zeros(pool, np.int64)  # masks used in the slot's store
    slot_evals = np.zeros(pool, np.int64)
    slot_new = np.zeros(pool, bool)  # admitted this round: evaluate f(background), f(x)
    slot_rng: list[np.random.RandomState | None] = [None] * pool
    credit = np.zeros((pool, 2 * m - 1))
    x_slot = torch.zeros(pool, m, device=device)
    bg_slot = torch.zeros(pool, m, device=device)
    store = torch.zeros(pool * capacity, m, dtype=torch.bool, device=device)
    target_slot = torch.zeros(pool, dtype=torch.long, device=device)

    # the frontier: every image's queued internal nodes, one array per field
    # (mask = row of the node's m00 in `store`; lo, hi = f00, f11; w = weight; prio, tie = heap keys)
    queue = {k: np.zeros(0, np.int64 if k in ("slot", "node", "mask") else np.float64) for k in QUEUE_FIELDS}
    out = np.empty((n, c, h, w), np.float32)
    next_image = 0

    def forward(rows_slot: np.ndarray, rows_mask: np.ndarray) -> np.ndarray:
        result = np.empty(len(rows_slot))
        for lo in range(0, len(rows_slot), forward_batch):
            chunk = rows_slot[lo : lo + forward_batch]
            s = torch.from_numpy(chunk).to(device)
            keep = store[torch.from_numpy(rows_mask[lo : lo + forward_batch]).to(device)]
            if inpaint is None:
                x = torch.where(keep, x_slot[s], bg_slot[s])
            else:
                x = inpaint(keep, images_u8, chunk, (c, h, w)).to(device)
            p = torch.softmax(model(x.view(-1, c, h, w)).float(), dim=1)
            result[lo : lo + len(s)] = p.gather(1, target_slot[s, None])[:, 0].double().cpu().numpy()
        return result

    try:
        while True:
            # 1. finish images whose budget is spent or whose queue is empty: queued nodes keep their credit
            queued = np.bincount(queue["slot"], minlength=pool) > 0
            finished = (slot_image >= 0) & ~slot_new & ((slot_evals >= budget) | ~queued)
            if finished.any():
                leave = finished[queue["slot"]]
                _credit(credit, _take(queue, leave))
                queue = _take(queue, ~leave)
                for s in np.flatnonzero(finished):
                    out[slot_image[s]] = tree.leaf_values(credit[s]).reshape(c, h, w)
                    credit[s], slot_image[s] = 0, -1
                    if progress is not None:
                        progress.update(1)
            # 2. admit the next images into free slots
            for s in np.flatnonzero(slot_image < 0)[: n - next_image]:
                i, next_image = next_image, next_image + 1
                slot_image[s], slot_used[s], slot_evals[s], slot_new[s] = i, 2, 0, True
                slot_rng[s] = np.random.RandomState(seeds[i])
                x_slot[s] = images[i].reshape(-1).to(device)
                if inpaint is None:
                    bg_slot[s] = backgrounds[i].reshape(-1).to(device)
                else:
                    images_u8[s] = np.rint(images_hwc[i] * 255).astype(np.uint8)
                target_slot[s] = int(targets[i])
                store[s * capacity] = False
                store[s * capacity + 1] = True
            if not (slot_image >= 0).any():
                break

            # 3. pop each image's next batch, as shap does: best nodes by (priority, tie), 2 masks each, while
            #    the batch is under batch_size and under the evaluations left
            order = np.lexsort((queue["tie"], queue["prio"], queue["slot"]))
            sorted_slot = queue["slot"][order]
            rank = np.arange(len(order)) - np.searchsorted(sorted_slot, sorted_slot, side="left")
            pops = (np.minimum(batch_size, budget - slot_evals) + 1) // 2
            picked = order[rank < pops[sorted_slot]]  # sorted by slot, then in pop order
            waiting = np.ones(len(order), bool)
            waiting[picked] = False
            popped, queue = _take(queue, picked), _take(queue, waiting)

            # 4. their masks m10 = m00 + left box and m01 = m00 + right box, in shap's batch order
            p_slot, p_node = popped["slot"], popped["node"]
            counts = np.bincount(p_slot, minlength=pool)
            first = np.searchsorted(p_slot, np.arange(pool))
            m10 = p_slot * capacity + slot_used[p_slot] + 2 * (np.arange(len(p_slot)) - first[p_slot])
            m01 = m10 + 1
            new_rows = np.stack([m10, m01], 1).ravel()
            if len(new_rows):
                store[torch.from_numpy(new_rows).to(device)] = store[
                    torch.from_numpy(np.repeat(popped["mask"], 2)).to(device)
                ]
                r, cols = tree.columns(np.stack([tree.left[p_node], tree.right[p_node]], 1).ravel())
                store[torch.from_numpy(new_rows[r]).to(device), torch.from_numpy(cols).to(device)] = True
            slot_used += 2 * counts
            slot_evals += 2 * counts

            # 5. one forward for all images: new images' f(background) and f(x), then every popped pair
            new = np.flatnonzero(slot_new)
            rows_slot = np.concatenate([np.repeat(new, 2), np.repeat(p_slot, 2)])
            rows_mask = np.concatenate([np.stack([new * capacity, new * capacity + 1], 1).ravel(), new_rows])
            values = forward(rows_slot, rows_mask)
            f_new = values[: 2 * len(new)].reshape(-1, 2)
            f10, f01 = values[2 * len(new) :].reshape(-1, 2).T

            # 6. push children as shap does, per popped node: (m00,f00,f10,L) (m00,f00,f01,R) (m01,f01,f11,L)
            #    (m10,f10,f11,R), priority -|f11 - f00|·w/2, and one normal draw each for ties
            ties = np.empty((len(p_slot), 4))
            for s in np.flatnonzero(counts):
                ties[first[s] : first[s] + counts[s]] = slot_rng[s].randn(4 * counts[s]).reshape(-1, 4)
            lft, rgt, m00, f00, f11 = tree.left[p_node], tree.right[p_node], popped["mask"], popped["lo"], popped["hi"]
            children = {
                "slot": np.repeat(p_slot, 4),
                "node": np.stack([lft, rgt, lft, rgt], 1).ravel(),
                "mask": np.stack([m00, m00, m01, m10], 1).ravel(),
                "lo": np.stack([f00, f00, f01, f10], 1).ravel(),
                "hi": np.stack([f10, f01, f11, f11], 1).ravel(),
                "w": np.repeat(popped["w"] / 2, 4),
                "tie": ties.ravel(),
            }
            children["prio"] = -np.abs(children["hi"] - children["lo"]) * children["w"]
            leaf = children["node"] < m  # a leaf's credit does not depend on when shap pops it: credit it now
            _credit(credit, _take(children, leaf))
            roots = {  # newly admitted images enter with their root, priority 0 and tie 0, as in shap
                "slot": new,
                "node": np.full(len(new), tree.root),
                "mask": new * capacity,
                "lo": f_new[:, 0],
                "hi": f_new[:, 1],
                "w": np.ones(len(new)),
                "prio": np.zeros(len(new)),
                "tie": np.zeros(len(new)),
            }
            queue = {k: np.concatenate([queue[k], children[k][~leaf], roots[k]]) for k in QUEUE_FIELDS}
            slot_new[:] = False
    finally:
        if inpaint is not None:
            inpaint.close()
    return out
