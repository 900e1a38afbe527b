"""Byte-identical images in an official train/test release (issue 24): the CIFAR-100 PNG folders hold the
same image under two classes (baby and girl, and others) and in both splits. The pipeline keeps the
split as released, so that its numbers compare with the paper's; this census says how many test images
that can touch.

    python studies/duplicates.py --root ../official/cifar100 --out studies/results/cifar100_duplicates.json

Every PNG under <root>/train and <root>/test is hashed (MD5 of the file's bytes); a group is the files
that share a hash."""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the project's impactx, like the stages

from impactx import ImpactXError  # noqa: E402
from impactx.io import save_json  # noqa: E402
from impactx.stage import run_stage  # noqa: E402


def census(root: Path) -> dict:
    """The groups of byte-identical PNGs under root/{train,test}/<class>/, and what they share."""
    groups: dict[str, list[str]] = defaultdict(list)
    counts = {}
    for split in ("train", "test"):
        files = sorted((root / split).glob("*/*.png"))
        if not files:
            raise ImpactXError(f"no PNGs under {root / split}/<class>/: point --root at a folder with train/ and test/")
        counts[split] = len(files)
        for f in files:
            groups[hashlib.md5(f.read_bytes()).hexdigest()].append(str(f.relative_to(root)))
    rows = []
    for files in (sorted(g) for g in groups.values() if len(g) > 1):
        splits = {f.split("/")[0] for f in files}
        classes = sorted({f.split("/")[1] for f in files})
        rows.append({"files": files, "classes": classes, "label_conflict": len(classes) > 1,
                     "train_and_test": splits == {"train", "test"}})  # fmt: skip
    rows.sort(key=lambda r: r["files"])
    test_touched = {f for r in rows if r["train_and_test"] for f in r["files"] if f.startswith("test/")}
    return {
        "images": counts,
        "groups": len(rows),
        "groups_with_two_labels": sum(r["label_conflict"] for r in rows),
        "groups_across_train_and_test": sum(r["train_and_test"] for r in rows),
        "test_images_with_a_training_copy": len(test_touched),
        "treatment": "kept as released: the official split, as the paper's numbers use it",
        "rows": [{**r, "files": ", ".join(r["files"]), "classes": ", ".join(r["classes"])} for r in rows],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="a folder with train/<class>/*.png and test/<class>/*.png")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = census(args.root)
    command = "python studies/duplicates.py " + " ".join(sys.argv[1:] if argv is None else argv)
    save_json(
        args.out, {"provenance": {"recipe": f"studies/recipes/{args.out.stem}.yaml", "command": command}, **result}
    )
    print(f"{result['groups']} groups of byte-identical images ({result['groups_with_two_labels']} with two labels, "
          f"{result['groups_across_train_and_test']} across train and test) -> {args.out}")  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
