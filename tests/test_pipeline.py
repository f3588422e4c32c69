import io
import json
import urllib.request

import pytest

from helpers import tiny_facts, tiny_lm
from legibility import LegibilityError, download_pararel, load_model, load_pararel
from legibility.cli import main
from legibility.forward import predict
from legibility.pipeline import KnownConfig, select_known


def test_known_filter_keeps_facts_whose_target_is_top_k_and_reports_drops():
    lm = tiny_lm("llama")
    facts = tiny_facts()
    everything = select_known(lm, facts, KnownConfig(top_k=10_000, min_share=0.0), progress=False)
    assert len(everything.kept) == len(facts) and everything.report["dropped"] == {}
    # top-1 on at least half of the prompts, recomputed independently
    strict = select_known(lm, facts, KnownConfig(top_k=1, min_share=0.5), progress=False)
    expected = []
    for r in everything.kept:
        ranks = predict(lm, [p.queries[0] for p in r.prompts]).rank
        if (ranks == 0).float().mean() >= 0.5:
            expected.append(r.fact.id)
    assert [r.fact.id for r in strict.kept] == [
        i for i in [r.fact.id for r in everything.kept] if i in expected
    ]
    assert strict.report["dropped"].get("not known by the model", 0) == len(facts) - len(expected)


def test_known_filter_limit_and_min_prompts():
    lm = tiny_lm("llama")
    sel = select_known(lm, tiny_facts(), KnownConfig(top_k=10_000, min_share=0.0, limit=2), progress=False)
    assert sel.report["kept_by_relation"] == {"P36": 2, "P37": 2}
    sel = select_known(
        lm, tiny_facts(), KnownConfig(top_k=10_000, min_share=0.0), min_prompts=3, progress=False
    )
    assert {r.fact.relation for r in sel.kept} == {"P36"}  # P37 facts have only 2 prompts
    assert sel.report["dropped"] == {"fewer than 3 usable prompts": 4}


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LegibilityError, match="could not load model 'someone/no-such-model'.*Offline"):
        load_model("someone/no-such-model")


def test_download_pararel_writes_the_upstream_layout(tmp_path, monkeypatch, pararel_dir):
    """The download code path, served from the local copy instead of the network."""
    seen = []

    def fake_urlopen(url, timeout=0):
        seen.append(url)
        kind = "patterns" if "graphs_json" in url else "facts"
        return io.BytesIO((pararel_dir / kind / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    root = download_pararel(tmp_path / "pp", relations=["P36", "P103"])
    assert len(seen) == 4 and all(
        u.startswith("https://raw.githubusercontent.com/yanaiela/pararel/") for u in seen
    )
    a = load_pararel(root, ["P36", "P103"])
    b = load_pararel(pararel_dir, ["P36", "P103"])
    assert [(f.id, f.prompts) for f in a] == [(f.id, f.prompts) for f in b]
    download_pararel(tmp_path / "pp", relations=["P36"])  # already there: nothing fetched
    assert len(seen) == 4


def test_download_failure_says_to_go_online(tmp_path, monkeypatch):
    def offline(url, timeout=0):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(LegibilityError, match="Are you online"):
        download_pararel(tmp_path, relations=["P36"])


@pytest.mark.slow
def test_smollm2_scorecard_on_two_known_facts(tmp_path, capsys, pararel_dir, monkeypatch):
    monkeypatch.setenv("LEGIBILITY_PARAREL", str(pararel_dir))
    out = tmp_path / "run"
    assert (
        main(
            [
                "score",
                "--relations",
                "P103",
                "--limit",
                "2",
                "--out",
                str(out),
                "--no-progress",
                "--controls",
                "1",
            ]
        )
        == 0
    )
    card = json.loads((out / "scorecard.json").read_text())["metrics"]
    assert card["neurons.per_fact"]["n"] == 2
    # Measured: own suppression about -0.99, random about -0.003 (README). Guard the direction with margin.
    assert card["suppression.own"]["value"] < -0.5
    assert abs(card["suppression.random"]["value"]) < 0.1
    assert card["suppressability"]["value"] > 0.4
