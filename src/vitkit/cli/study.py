"""`vitkit study NAME`: one of the lectures' claims, run end to end, with a report and a verdict."""
from __future__ import annotations


def add_parser(sub, name):
    p = sub.add_parser(name, help="reproduce one of the lectures' claims: figures, a report and a verdict",
                       description="Run one study end to end and write runs/study-NAME/: report.html (the claim, "
                                   "the setup, the plots, a table and a verdict — held, did not hold or partly — "
                                   "that a rule in code draws from the figures), results.json (every figure) and "
                                   "the PNGs. `vitkit study --list` names the studies.")
    p.add_argument("study", nargs="?", help="the study to run (see --list)")
    p.add_argument("--list", action="store_true", help="name the studies and their claims, then stop")
    p.add_argument("--quick", action="store_true", help="a reduced version in about a minute (fewer seeds and "
                                                        "epochs; the report says so): for tests")
    p.add_argument("--runs-dir", default="runs", help="where the study-NAME folder goes (default: runs)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, so minutes compare)")


def run(args) -> int:
    from ..study import all_studies, run_study

    studies = all_studies()
    if args.list:
        width = max(map(len, studies))
        for name, s in studies.items():
            print(f"{name:<{width}}  {s.claim}" + (f"  [~{s.minutes} min]" if s.minutes else ""))
        return 0
    if not args.study:
        raise ValueError(f"name a study to run, e.g. `vitkit study attention-memory`; the studies are "
                         f"{', '.join(studies)} (`vitkit study --list` gives their claims)")
    if args.study not in studies:
        raise ValueError(f"there is no study {args.study!r}; the studies are {', '.join(studies)}")
    if args.threads < 1:
        raise ValueError(f"--threads is {args.threads} but must be a whole number ≥ 1")
    out = run_study(args.study, runs_dir=args.runs_dir, quick=args.quick, threads=args.threads)
    print(f"wrote {out / 'report.html'}, {out / 'results.json'} and the PNGs in {out}")
    return 0
