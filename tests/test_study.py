"""`vitkit study`: each study's --quick form writes report.html and results.json holding its figures, and the verdict
is the one its rule draws from those figures. Nothing here asserts that a claim held: that is measured."""
from __future__ import annotations

import html
import json
import math

import pytest

pytest.importorskip("matplotlib")

from vitkit.cli import main  # noqa: E402
from vitkit.study import VERDICTS, all_studies  # noqa: E402

FAST = ["attention-memory"]
# Each trains for 10–60 s at one thread: `make test-slow`.
SLOW = [n for n in ("attention-distance", "wrong-token", "resolution", "position-embeddings", "filters",
                    "data-scale", "cls-on-object") if n in all_studies()]


def _numbers(value):
    """Every number in a JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def check_study(name: str, runs_dir) -> dict:
    assert main(["study", name, "--quick", "--runs-dir", str(runs_dir)]) == 0
    out = runs_dir / f"study-{name}"
    results = json.loads((out / "results.json").read_text())
    for key in ("study", "claim", "quick", "seeds", "verdict", "why", "rule", "headline", "figures", "setup",
                "table", "plots", "minutes", "machine", "threads"):
        assert key in results, key
    assert results["study"] == name and results["quick"] is True and results["threads"] == 1
    assert results["figures"], "a study with no figures"
    numbers = list(_numbers(results["figures"]))
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert results["verdict"] in VERDICTS
    study = all_studies()[name]
    assert study.decide(results["figures"]) == (results["verdict"], results["why"])  # the rule decides, not text
    assert results["plots"], "a study with no plot"
    for p in results["plots"]:
        assert (out / p["file"]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = (out / "report.html").read_text()
    assert f"Verdict: {results['verdict']}" in page
    assert html.escape(study.claim) in page
    assert page.count("data:image/png;base64,") == len(results["plots"])  # self-contained
    assert "Quick run" in page
    return results


@pytest.mark.parametrize("name", FAST)
def test_quick_study_writes_its_report_and_figures(name, tmp_path):
    check_study(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_quick_training_study_writes_its_report_and_figures(name, tmp_path):
    results = check_study(name, tmp_path)
    assert results["seeds"], "a study that compares states its seeds"
    assert (tmp_path / f"study-{name}" / "runs").is_dir()  # it trained through the one runtime


def test_list_names_every_study(capsys):
    assert main(["study", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(all_studies())
    assert set(FAST) | set(SLOW) == set(listed)


def test_unknown_study_is_refused_with_the_names(capsys):
    assert main(["study", "no-such-study"]) == 2
    err = capsys.readouterr().err
    assert "no-such-study" in err and "attention-memory" in err


def test_every_rule_can_give_every_verdict():
    """Each rule is a function of the figures alone: feed it figures that should give each word."""
    studies = all_studies()
    cases = {
        "attention-memory": [
            ({"explicit_exponent": 2.0, "explicit_over_arithmetic_at_largest": 2.0, "fused_exponent": 1.0}, "held"),
            ({"explicit_exponent": 2.0, "explicit_over_arithmetic_at_largest": 2.0, "fused_exponent": 2.0}, "partly"),
            ({"explicit_exponent": 1.0, "explicit_over_arithmetic_at_largest": 0.1, "fused_exponent": 2.0},
             "did not hold")],
        "attention-distance": [
            ({"slopes": [1.0, 2.0], "slope_mean": 1.5, "spread_first_mean": 9.0, "spread_last_mean": 1.0}, "held"),
            ({"slopes": [1.0, -0.1], "slope_mean": 0.45, "spread_first_mean": 1.0, "spread_last_mean": 1.0},
             "partly"),
            ({"slopes": [-1.0, 0.0], "slope_mean": -0.5, "spread_first_mean": 1.0, "spread_last_mean": 5.0},
             "did not hold")],
        "wrong-token": [
            ({"gaps": [0.02, 0.03], "gap_mean": 0.025}, "held"),
            ({"gaps": [0.02, -0.003], "gap_mean": 0.0085}, "partly"),
            ({"gaps": [0.001, -0.002], "gap_mean": -0.0005}, "did not hold")],
        "resolution": [
            ({"margins": {"40": [0.1, 0.2]}, "margin_means": {"40": 0.15}}, "held"),
            ({"margins": {"20": [0.1, 0.2], "40": [0.0, 0.01]}, "margin_means": {"20": 0.15, "40": 0.005}},
             "partly"),
            ({"margins": {"40": [0.0, 0.01]}, "margin_means": {"40": 0.005}}, "did not hold")],
        "position-embeddings": [
            ({"gaps": [0.3, 0.4], "gap_mean": 0.35, "correlation_mean": -0.6}, "held"),
            ({"gaps": [0.3, 0.4], "gap_mean": 0.35, "correlation_mean": 0.0}, "partly"),
            ({"gaps": [0.0, 0.01], "gap_mean": 0.005, "correlation_mean": 0.0}, "did not hold")],
    }
    for name, examples in cases.items():
        if name not in studies:
            continue
        for figures, want in examples:
            got, why = studies[name].decide(figures)
            assert got == want, (name, figures, got, why)
