"""What a study is, how it runs, and how its report is written.

A study is a claim from the lectures, a way to measure it, and a rule that turns the figures into a verdict:

    Study(name, claim, rule, run, decide, needed)
        run(ctx) → Findings           trains through vitkit.train, analyses through vitkit.explain
        decide(figures) → (verdict, why)   a pure function of the figures in results.json

`run_study(name, quick=...)` runs one and writes runs/study-NAME/: report.html (the claim, the setup, the
plots, the table and the verdict), results.json (every figure, the verdict and the reason) and the PNGs.
The verdict comes from `decide` alone, so anyone can re-check it from results.json; the report's text never
decides it.
"""
from __future__ import annotations

import html
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

VERDICTS = ("held", "did not hold", "partly")


@dataclass(frozen=True)
class Study:
    name: str                                   # the command's argument: `vitkit study NAME`
    claim: str                                  # the lectures' claim, one sentence
    rule: str                                   # the verdict rule in words; `decide` is the rule in code
    run: Callable[["Context"], "Findings"]      # the experiment
    decide: Callable[[dict], tuple[str, str]]   # figures → (one of VERDICTS, why, with the numbers)
    needed: str                                 # what would be needed to see the claim where it did not hold
    minutes: str = ""                           # how long the full study takes (AMD EPYC, 1 thread), for --list


@dataclass
class Findings:
    setup: list[str]                            # what was trained on what, with what budget: one line each
    seeds: list[int]                            # the seeds every compared arm ran
    figures: dict[str, Any]                     # every number; the verdict reads only these
    headline: str                               # the one figure a README row shows
    table: tuple[list[str], list[list]]         # (header, rows)
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What a study's run gets: where to write, how big to be, and the shared ways to train and to plot."""
    out_dir: Path
    quick: bool
    log: Callable[[str], None] = print
    plots: list[tuple[str, str]] = field(default_factory=list)  # (PNG file name, caption), in order

    def pick(self, full, quick):
        """`quick` under --quick, `full` otherwise."""
        return quick if self.quick else full

    def train(self, name: str, *, module=None, **fields):
        """One training run through the one runtime: runs/study-NAME/runs/<name>, one thread, no bar.
        fields: TrainConfig's; module: train this nn.Module instead of building fields['model']."""
        from ..train import TrainConfig, train

        cfg = TrainConfig(name=name, runs_dir=str(self.out_dir / "runs"), progress=False, threads=1, **fields)
        t0 = time.time()
        result = train(cfg, model=module, overwrite=True, log=lambda s: None)
        self.log(f"  trained {name}: best {result.best_score:.4f} ({time.time() - t0:.0f} s)")
        return result

    def save(self, fig, filename: str, caption: str) -> str:
        """Write a matplotlib Figure as out_dir/filename and list it in the report with its caption."""
        from ..explain.report import png_bytes

        (self.out_dir / filename).write_bytes(png_bytes(fig))
        self.plots.append((filename, caption))
        return filename


def figure(width: float = 5, height: float = 3.6):
    """A matplotlib Figure that needs no pyplot (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


# ---- the registry ---------------------------------------------------------------------------------------
STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    if study.decide is None or study.run is None:
        raise ValueError(f"study {study.name} needs run and decide")
    STUDIES[study.name] = study
    return study


# ---- small statistics the rules share ---------------------------------------------------------------------
def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def sd(xs) -> float:
    """Sample standard deviation (0 for a single value)."""
    xs = list(xs)
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def slope(xs, ys) -> float:
    """Least-squares slope of ys on xs."""
    mx, my = mean(xs), mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def correlation(xs, ys) -> float:
    """Pearson correlation."""
    mx, my = mean(xs), mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else 0.0


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


# ---- running one and writing its report ---------------------------------------------------------------------
def _plain(value):
    """Figures as JSON: tensors and numpy numbers become floats and lists; every number must be finite."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a study figure is {value}; every figure must be finite (a run diverged?)")
    return value


def machine() -> str:
    """The CPU's model name, as every benchmark names it."""
    from ..bench import cpu_name
    return cpu_name()


def run_study(name: str, *, runs_dir: str | Path = "runs", quick: bool = False, threads: int = 1,
              log: Callable[[str], None] = print) -> Path:
    """Run study `name` and write runs_dir/study-NAME/{report.html, results.json, *.png}; returns the folder.

    The folder is emptied first, so what it holds is one run's. threads: torch CPU threads (1 by default,
    so that the minutes compare between machines that are shared)."""
    import torch

    from . import all_studies

    studies = all_studies()
    if name not in studies:
        raise KeyError(f"no study named {name!r}; `vitkit study --list` names them: {', '.join(studies)}")
    study = studies[name]
    out = Path(runs_dir) / f"study-{name}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.set_num_threads(threads)
    ctx = Context(out, quick, log)
    log(f"study {name}{' (quick)' if quick else ''}: {study.claim}")
    t0 = time.time()
    found = study.run(ctx)
    minutes = (time.time() - t0) / 60
    figures = _plain(found.figures)
    verdict, why = study.decide(figures)
    if verdict not in VERDICTS:
        raise ValueError(f"study {name}'s rule gave {verdict!r}, not one of {', '.join(VERDICTS)}")
    results = {
        "study": name, "claim": study.claim, "quick": quick, "seeds": found.seeds, "verdict": verdict, "why": why,
        "rule": study.rule, "headline": found.headline, "figures": figures, "setup": found.setup,
        "table": {"header": found.table[0], "rows": _plain(found.table[1])}, "notes": found.notes,
        "plots": [{"file": f, "caption": c} for f, c in ctx.plots], "minutes": round(minutes, 2),
        "machine": machine(), "threads": threads, "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.html").write_text(render_html(study, results, out))
    log(f"verdict: {verdict} ({why}); {minutes:.1f} min; wrote {out / 'report.html'}")
    return out


# ---- HTML ------------------------------------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;margin:1.5em auto;max-width:1000px;color:#222;line-height:1.4}
h1{font-size:1.5em}.claim{font-size:1.2em}.verdict{font-size:1.3em;font-weight:bold;padding:.4em .6em;
border-radius:4px;display:inline-block}.held{background:#d6f5d6}.partly{background:#fff1c2}
.did-not-hold{background:#f8d4d4}table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%}.quick{color:#a35a00}
.small{font-size:.85em;color:#555}"""


def _cell(v) -> str:
    if isinstance(v, float):
        return html.escape(f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}")
    if isinstance(v, int):
        return html.escape(f"{v:,}")
    return html.escape(str(v))


def render_html(study: Study, r: dict, out: Path) -> str:
    """The report: claim, verdict (from the rule), setup, plots (inline, and beside it as PNGs), table, notes."""
    from ..explain.report import data_uri

    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>vitkit study {e(study.name)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>vitkit study {e(study.name)}</h1>",
             f"<p class='claim'><b>Claim.</b> {e(study.claim)}</p>",
             f"<p><span class='verdict {r['verdict'].replace(' ', '-')}'>Verdict: {e(r['verdict'])}</span></p>",
             f"<p>{e(r['why'])}</p>",
             f"<p class='small'><b>Rule</b> (in code: <code>decide</code> in vitkit.study; applied to "
             f"results.json's figures): {e(study.rule)}</p>"]
    if r["verdict"] != "held":
        parts.append(f"<p><b>What would be needed to see it.</b> {e(study.needed)}</p>")
    if r["quick"]:
        parts.append("<p class='quick'><b>Quick run</b> (--quick): a reduced budget and fewer seeds, for tests. "
                     "Its verdict says little; run the study without --quick for the figures the README quotes.</p>")
    parts.append(f"<p><b>Headline.</b> {e(r['headline'])}</p>")
    parts.append("<h2>Setup</h2><ul>" + "".join(f"<li>{e(s)}</li>" for s in r["setup"]))
    seeds = ", ".join(map(str, r["seeds"])) or "none (nothing is trained or drawn at random)"
    parts.append(f"<li>seeds: {e(seeds)}" + (" (fewer than the full study's: --quick)" if r["quick"] and r["seeds"]
                                              else "") + "</li>"
                 f"<li>{e(r['machine'])}, {r['threads']} thread(s), torch {e(r['torch'])}: "
                 f"{r['minutes']:.1f} minutes</li></ul>")
    header, rows = r["table"]["header"], r["table"]["rows"]
    parts.append("<h2>Table</h2><table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows]
    parts.append("</table>")
    if r["plots"]:
        parts.append("<h2>Plots</h2>")
    for p in r["plots"]:
        uri = data_uri((out / p["file"]).read_bytes())
        parts.append(f"<figure><img src='{uri}' alt='{e(p['file'])}'><figcaption>{e(p['caption'])} "
                     f"({e(p['file'])})</figcaption></figure>")
    if r["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in r["notes"]) + "</ul>")
    parts.append("<p class='small'>Every figure is in results.json beside this page.</p></body></html>")
    return "\n".join(parts) + "\n"


__all__ = ["Context", "Findings", "STUDIES", "Study", "VERDICTS", "correlation", "figure", "fmt", "machine",
           "mean", "register", "render_html", "run_study", "sd", "slope"]
