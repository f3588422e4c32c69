"""Knowledge-neuron sets: export, read back, EleutherAI's published format, comparison across tools."""

import json

import pytest

from legibility import LegibilityError
from legibility.cli import main
from legibility.neuron_sets import (
    FORMAT,
    VERSION,
    FactNeurons,
    NeuronSet,
    compare,
    from_run,
    jaccard,
    read_neuron_set,
    write_neuron_set,
)

SETTINGS = {"model": "smollm2-135m", "site": "ffn", "method": "ig", "steps": 20, "threshold": 0.2}
RECORDS = [
    {
        "fact_id": "4168a6fb",
        "relation": "P36",
        "subject": "Cook County",
        "object": "Chicago",
        "prompts": ["The capital of Cook County is"],
        "neurons": [[20, 7], [3, 1500]],
        "share": 0.5,
    },
    {
        "fact_id": "f2",
        "relation": "P103",
        "subject": "a",
        "object": "b",
        "prompts": ["x", "y"],
        "neurons": [],
    },
]


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(SETTINGS))
    (run / "neurons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return run


def test_export_writes_the_documented_schema_and_reads_back(tmp_path):
    ns = from_run(_run_dir(tmp_path))
    path = write_neuron_set(ns, tmp_path / "kn.json")
    data = json.loads(path.read_text())
    assert {k: data[k] for k in ("format", "version", "model", "site", "method")} == {
        "format": FORMAT,
        "version": VERSION,
        "model": "smollm2-135m",
        "site": "ffn",
        "method": "ig",
    }
    assert data["settings"] == SETTINGS
    first = data["facts"][0]
    assert set(first) == {"fact_id", "relation", "subject", "object", "prompts", "neurons"}
    assert first["neurons"] == [[3, 1500], [20, 7]]  # sorted [layer, index] pairs
    back = read_neuron_set(path)
    assert back.facts == ns.facts and back.model == ns.model and back.settings == SETTINGS
    assert read_neuron_set(tmp_path / "run").facts == ns.facts  # a run directory reads the same


def test_eleuther_published_format_is_read_with_relation_names(tmp_path):
    neurons = {"4168a6fb": [[20, 7], [3, 1500], [20, 7]], "9e0027e7": [[11, 2092]]}
    results = {
        "4168a6fb": {"relation_name": "P36", "n_refined_neurons": 2},
        "9e0027e7": {"relation_name": "P36"},
    }
    f = tmp_path / "bert-base-uncased_pararel_neurons_0.json"
    f.write_text(json.dumps(neurons, indent=4))
    (tmp_path / "bert-base-uncased_pararel_results_0.json").write_text(json.dumps(results))
    ns = read_neuron_set(f)
    assert ns.model == "bert-base-uncased" and ns.site == "eleuther" and "EleutherAI" in ns.source
    assert ns.facts["4168a6fb"].neurons == ((3, 1500), (20, 7))  # duplicates dropped
    assert ns.facts["9e0027e7"].relation == "P36"


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": FORMAT, "version": 99, "facts": []}))
    with pytest.raises(LegibilityError, match="version 99"):
        read_neuron_set(bad)
    bad.write_text(json.dumps({"f": [[1, 2, 3]]}))
    with pytest.raises(LegibilityError, match=r"\[\[layer, index\]"):
        read_neuron_set(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(LegibilityError, match="neither"):
        read_neuron_set(bad)
    with pytest.raises(LegibilityError, match="no neurons.jsonl"):
        from_run(tmp_path)


def _set(facts: dict, model="m", site="ffn") -> NeuronSet:
    return NeuronSet(model, "ig", {k: FactNeurons(k, tuple(v), "P1") for k, v in facts.items()}, site=site)


def test_compare_counts_jaccard_per_fact_and_pooled():
    a = _set({"f1": [(0, 1), (1, 2)], "f2": [], "f3": [(2, 2)], "only_a": [(0, 0)]})
    b = _set({"f1": [(0, 1)], "f2": [], "f3": [(5, 5)], "only_b": [(0, 0)]})
    r = compare(a, b)
    assert (r["shared_facts"], r["only_a"], r["only_b"]) == (3, 1, 1)
    by_fact = {x["fact_id"]: x["jaccard"] for x in r["per_fact"]}
    assert by_fact == {"f1": 0.5, "f2": 1.0, "f3": 0.0}
    assert r["mean_jaccard"]["value"] == pytest.approx(0.5)
    assert r["micro_jaccard"] == pytest.approx(1 / 4)  # (1 + 0 + 0) / (2 + 0 + 2)
    assert r["identical_share"] == pytest.approx(1 / 3) and r["disjoint_share"] == pytest.approx(1 / 3)
    assert r["warnings"] == []
    assert jaccard({1}, {1}) == 1.0 and jaccard(set(), {1}) == 0.0
    r = compare(a, _set({"f1": [(0, 1)]}, model="other", site="eleuther"))
    assert any("different models" in w for w in r["warnings"])
    assert any("different sites" in w for w in r["warnings"])


def test_cli_export_import_compare(tmp_path, capsys):
    run = _run_dir(tmp_path)
    ours = tmp_path / "ours.json"
    assert main(["export-neurons", str(run), "--to", str(ours)]) == 0
    assert "2 facts, 2 knowledge neurons" in capsys.readouterr().out
    theirs = tmp_path / "smollm2-135m_pararel_neurons_0.json"
    theirs.write_text(json.dumps({"4168a6fb": [[20, 7]], "f2": []}))
    converted = tmp_path / "theirs.json"
    assert main(["import-neurons", str(theirs), "--to", str(converted), "--model", "smollm2-135m"]) == 0
    assert read_neuron_set(converted).source.startswith("EleutherAI")
    out_json = tmp_path / "cmp.json"
    capsys.readouterr()
    assert main(["compare-neurons", str(run), str(converted), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "shared facts: 2" in printed and "mean Jaccard per fact: 0.750" in printed
    assert "different sites" in printed  # ours: ffn; EleutherAI's: their own site variant
    assert json.loads(out_json.read_text())["micro_jaccard"] == pytest.approx(0.5)
    assert main(["compare-neurons", str(run), str(tmp_path / "missing.json")]) == 2
