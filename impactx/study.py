"""Named study recipes: studies/recipes/<name>.yaml, a params overlay (or a script) versioned with the code,
run by one command, in the way lightning-hydra-template names its experiment configs.

    description: what the study asks
    base: another recipe whose `set` this one extends (optional)
    set: {dotted.key: value, ...}   params.yaml overrides, as `dvc exp run -S` takes them
    targets: [stage, ...]           optional: the DVC targets (default: the whole pipeline)
    script: a command instead of a pipeline run (a study script under studies/)
    result: studies/results/<name>.json, what `record` writes

    python -m impactx.study list
    python -m impactx.study run <name> [--dry-run]    # dvc exp run -n <name> -S ... (or the script)
    python -m impactx.study record <name>             # metrics/comparison.json + provenance -> result

A recorded result holds its provenance (`provenance`: the recipe, the command, the commit, the params
overrides), which the docs' results pages show (impactx.report)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from impactx import ImpactXError, layout
from impactx.io import save_json
from impactx.params import parse_params

RECIPES = Path("studies/recipes")
PROVENANCE = "provenance"  # the key of a result JSON that says where it came from


def recipe_path(name: str, root: Path = Path(".")) -> Path:
    return root / RECIPES / f"{name}.yaml"


def names(root: Path = Path(".")) -> list[str]:
    return sorted(p.stem for p in (root / RECIPES).glob("*.yaml"))


def load(name: str, root: Path = Path(".")) -> dict:
    """The recipe with its base's `set` merged under its own."""
    path = recipe_path(name, root)
    if not path.exists():
        raise ImpactXError(f"no study recipe '{name}' ({path}): use one of {', '.join(names(root))}")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ImpactXError(
            f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}; quote a value holding ': '"
        ) from None
    unknown = set(recipe) - {"description", "base", "set", "targets", "script", "result"}
    if unknown:
        raise ImpactXError(
            f"{path}: unknown key(s) {sorted(unknown)}: use description, base, set, targets, script, result"
        )
    if "base" in recipe:
        base = load(recipe["base"], root)
        recipe["set"] = {**base.get("set", {}), **recipe.get("set", {})}
    return recipe


def _value(v) -> str:
    """A value as `dvc exp run -S` parses it (YAML): lists as [a,b], booleans lower case."""
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def command(name: str, root: Path = Path(".")) -> list[str]:
    """The command that runs the recipe: its script, or dvc exp run -n <name> with one -S per setting."""
    recipe = load(name, root)
    if "script" in recipe:
        return shlex.split(recipe["script"])
    cmd = ["dvc", "exp", "run", "-n", name]
    for key, v in recipe.get("set", {}).items():
        cmd += ["-S", f"{key}={_value(v)}"]
    return cmd + list(recipe.get("targets", []))


def check(name: str, root: Path = Path(".")) -> None:
    """The recipe's overrides applied to params.yaml validate: a renamed key fails here, not hours in."""
    raw = yaml.safe_load((root / "params.yaml").read_text()) or {}
    for key, v in load(name, root).get("set", {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    parse_params(raw, f"{recipe_path(name, root)} over params.yaml")


def head_commit(root: Path = Path(".")) -> str | None:
    """The checkout's short commit, for a result's provenance (None outside git)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() or None


def machine() -> dict:
    """What a timing ran on, for a result's provenance: CPU model, cores, torch threads and version."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def report_benchmark(line: dict, host: dict, out: Path | None) -> None:
    """A benchmark's result: its JSON line printed, and with `out` written as a results JSON with its
    provenance (the command as typed, this commit, `host`: machine() and the load before it ran)."""
    print(json.dumps(line))
    if out:
        prov = {"command": shlex.join(["python", *sys.argv]), "commit": head_commit(), "commit_is": "the code that ran",
                "machine": host}  # fmt: skip
        save_json(out, {PROVENANCE: prov, **line})


def record(name: str, root: Path = Path(".")) -> Path:
    """metrics/comparison.json of the run just made, with its provenance, as the recipe's result."""
    recipe = load(name, root)
    if "result" not in recipe or "script" in recipe:
        raise ImpactXError(f"study '{name}' writes its own result (its script's --out): nothing to record")
    table = root / layout.TABLE_JSON
    if not table.exists():
        raise ImpactXError(f"{table} not found: run the study first (python -m impactx.study run {name})")
    out = root / recipe["result"]
    provenance = {"recipe": str(RECIPES / f"{name}.yaml"), "command": shlex.join(command(name, root)),
                  "commit": head_commit(root), "params": recipe.get("set", {})}  # fmt: skip
    save_json(out, {PROVENANCE: provenance, **json.loads(table.read_text())})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m impactx.study", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    sub.add_parser("list", help="the recipes and what each asks")
    run = sub.add_parser("run", help="run a recipe")
    run.add_argument("name")
    run.add_argument("--dry-run", action="store_true", help="print the command only")
    rec = sub.add_parser("record", help="write the run's table and provenance to the recipe's result")
    rec.add_argument("name")
    args = ap.parse_args(argv)
    try:
        if args.verb == "list":
            for n in names():
                print(f"{n}: {load(n).get('description', '')}")
        elif args.verb == "run":
            check(args.name)
            cmd = command(args.name)
            print(shlex.join(cmd), flush=True)
            if not args.dry_run:
                return subprocess.run(cmd).returncode
        else:
            print(f"recorded {record(args.name)}")
    except ImpactXError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
