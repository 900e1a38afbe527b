"""The results pages are generated from studies/results/*.json (impactx.report), and every study recipe
(impactx.study) still validates against params.yaml and builds the command it documents."""

import json
import shutil

import pytest
import yaml
from conftest import REPO

from impactx import ImpactXError, report, study


@pytest.fixture
def results_copy(tmp_path, monkeypatch):
    """A project root holding only what the report reads and writes."""
    for d in ("studies/results", "studies/paper", "studies/recipes", "docs/results"):
        shutil.copytree(REPO / d, tmp_path / d)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_committed_pages_are_what_the_json_regenerates():
    expected = report.pages(REPO)
    assert {p.name for p in expected} == {p.name for p in (REPO / report.PAGES).glob("*.md")}
    for path, text in expected.items():
        assert (REPO / path).read_text() == text, f"{path}: run python -m impactx.report"


def test_check_fails_on_an_edited_page_and_on_a_page_without_its_json(results_copy, capsys):
    assert report.main(["--check"]) == 0
    page = results_copy / "docs/results/cifar10_table2_seeds0-4.md"
    page.write_text(page.read_text().replace("0.", "0.9", 1))
    (results_copy / "docs/results/orphan.md").write_text("# typed by hand\n")
    assert report.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "cifar10_table2_seeds0-4.md: differs" in err and "orphan.md: differs" in err
    (results_copy / "docs/results/orphan.md").unlink()
    assert report.main([]) == 0 and report.main(["--check"]) == 0  # regenerated


def test_a_result_whose_recipe_is_gone_stops_with_one_line(results_copy, capsys):
    (results_copy / "studies/recipes/decoder_study_seed1.yaml").unlink()
    assert report.main([]) == 2
    assert "names the recipe studies/recipes/decoder_study_seed1.yaml, which does not exist" in capsys.readouterr().err


def test_a_number_on_a_page_comes_from_its_json(results_copy):
    path = results_copy / "studies/results/cifar10_table2_seeds0-4.json"
    data = json.loads(path.read_text())
    data["impactx"]["test_accuracy"]["mean"] = 0.123456
    path.write_text(json.dumps(data))
    assert report.main([]) == 0
    assert "0.1235" in (results_copy / "docs/results/cifar10_table2_seeds0-4.md").read_text()
    table2 = (results_copy / "docs/results/table2.md").read_text()
    assert "7065" in table2  # the paper's IMPACTX number, from studies/paper/table2.json
    cell = results_copy / "studies/results/cifar10_official_impactx_lambda0.4_seeds0-4.json"
    data = json.loads(cell.read_text())
    data["impactx"]["test_accuracy_minus_impactx_lambda0"] = {"mean": 0.0432, "ci95": 0.0011, "n": 5}
    cell.write_text(json.dumps(data))
    assert report.main([]) == 0  # a cell's paired verdicts come from its study's JSON
    assert (
        "- IMPACTX − IMPACTX, λ = 0 (control), test accuracy: +4.3 ± 0.1 points (5 seeds): higher"
        in (results_copy / "docs/results/table2.md").read_text()
    )


@pytest.mark.parametrize("name", study.names(REPO))
def test_every_recipe_validates_against_params_yaml(name):
    study.check(name, REPO)
    cmd = study.command(name, REPO)
    recipe = study.load(name, REPO)
    if "script" in recipe:
        assert cmd[0] == "python" and (REPO / cmd[1]).exists()
    else:
        assert cmd[:5] == ["dvc", "exp", "run", "-n", name]
        assert cmd.count("-S") == len(recipe["set"])


def test_a_recipe_extends_its_base_and_spells_values_as_dvc_parses_them(tmp_path):
    (tmp_path / "studies/recipes").mkdir(parents=True)
    (tmp_path / "studies/recipes/base.yaml").write_text(yaml.safe_dump({"set": {"a.b": 1, "flag": True}}))
    child = {"base": "base", "set": {"seeds": [0, 1], "a.b": 2}, "targets": ["compare"]}
    (tmp_path / "studies/recipes/child.yaml").write_text(yaml.safe_dump(child))
    assert study.command("child", tmp_path) == [
        "dvc", "exp", "run", "-n", "child", "-S", "a.b=2", "-S", "flag=true", "-S", "seeds=[0, 1]", "compare",
    ]  # fmt: skip


def test_a_recipe_with_a_renamed_key_fails_before_it_runs(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "studies/recipes").mkdir(parents=True)
    (tmp_path / "studies/recipes/old.yaml").write_text(yaml.safe_dump({"set": {"finetune.epochs": 3}}))
    with pytest.raises(ImpactXError, match="finetune"):
        study.check("old", tmp_path)
    (tmp_path / "studies/recipes/typo.yaml").write_text(yaml.safe_dump({"sett": {}}))
    with pytest.raises(ImpactXError, match=r"unknown key\(s\) \['sett'\]"):
        study.load("typo", tmp_path)
    with pytest.raises(ImpactXError, match="no study recipe 'nope'"):
        study.load("nope", tmp_path)
    (tmp_path / "studies/recipes/colon.yaml").write_text("description: a: b\nset: {}\n")
    with pytest.raises(ImpactXError, match=r"colon.yaml: not valid YAML \(line 1\).*quote"):
        study.load("colon", tmp_path)


def test_record_writes_the_table_with_its_provenance(tmp_path):
    (tmp_path / "studies/recipes").mkdir(parents=True)
    recipe = {"set": {"seeds": [0]}, "result": "studies/results/mine.json"}
    (tmp_path / "studies/recipes/mine.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ImpactXError, match="run the study first"):
        study.record("mine", tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/comparison.json").write_text(json.dumps({"baseline": {"seeds": 1}}))
    out = json.loads(study.record("mine", tmp_path).read_text())
    assert out["baseline"] == {"seeds": 1}
    assert out["provenance"]["command"] == "dvc exp run -n mine -S 'seeds=[0]'"
    assert out["provenance"]["recipe"] == "studies/recipes/mine.yaml"


def test_a_benchmark_result_is_a_table_with_its_machine(results_copy):
    rows = [{"backbone": "lenet5", "setting": "eager_fp32", "forward_images_per_s": 20123},
            {"backbone": "lenet5", "setting": "compiled_fp32", "forward_images_per_s": 61234}]  # fmt: skip
    prov = {"command": "python benchmarks/inference.py", "commit": "abc1234", "machine": {"cores": 2}}
    (results_copy / "studies/results/bench.json").write_text(json.dumps({"provenance": prov, "rows": rows}))
    assert report.main([]) == 0
    page = (results_copy / "docs/results/bench.md").read_text()
    assert "| backbone | setting | forward_images_per_s |" in page
    assert "| lenet5 | compiled_fp32 | 61234 |" in page and "cores `2`" in page
    assert "[bench](bench.md): `python benchmarks/inference.py`" in (results_copy / "docs/results/index.md").read_text()
