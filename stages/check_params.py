"""DVC stage check_params: validate the whole params.yaml. It depends on every key, so a key no other
stage reads (an unknown top-level key, a misspelt section) stops `dvc repro` with one line and exit 2,
even when every other stage is cached. It writes nothing and logs no MLflow run."""

from impactx.params import load_params
from impactx.stage import run_stage


def main():
    params = load_params()
    print(f"params.yaml: every key is valid ({len(params.model_dump())} top-level keys)")


if __name__ == "__main__":
    run_stage(main)
