"""The paper's tables, comparisons and figures from a results folder (local, or a pyarrow URI such as s3://).

    python -m analysis table results/digits                          # one chosen cell per scheme
    python -m analysis table results/digits --kind cells             # every variant, α and r
    python -m analysis table results/digits --format latex --pick final --versus Standard
    python -m analysis table results/digits --kind trials --format csv > trials.csv
    python -m analysis compare results/digits                        # GNP − Standard, GNP − SAM, ...
    python -m analysis compare results/digits gnp:alpha=0.3,r=0.05 SAM
    python -m analysis figures results/digits --out figures/
    python -m analysis report results/digits                         # results/digits/report/report.{md,html}

A user mistake (no such folder, no trial files, a corrupt or foreign file, an unknown scheme or option)
prints one line and exits 2.
"""

import argparse
import sys
import warnings

import pandas as pd

from analysis.comparison import BOOTSTRAP_MIN_N, SPEC_HELP, compare, default_pairs
from analysis.errors import AnalysisError
from analysis.figures import make_figures
from analysis.load import load_results
from analysis.report import default_out, write_report
from analysis.summary import PICKS, summarize, with_schemes
from analysis.tables import FORMATS, KINDS, format_comparison, format_table
from gnp.errors import OneLineParser


def _common(pick: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("results", help="results folder or URI holding the trials' *.parquet files")
    common.add_argument(
        "--pick",
        choices=PICKS,
        default=pick,
        help=f"score each trial at its best epoch (lowest top-1, chosen on the reported test set: optimistic), "
        f"at its final epoch, or at the epoch of its lowest error on held-out training images (--holdout-images; "
        f"cells are then chosen on those too) (default: {pick})",
    )
    common.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out corrupt or foreign .parquet files with a warning instead of stopping",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m analysis", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    table = sub.add_parser(
        "table",
        parents=[_common("best")],
        help="print a table",
        description="Print mean ± std test errors over seeds, with the chosen α and r.",
    )
    table.add_argument(
        "--format", choices=FORMATS, default="md", help="md (default), latex (a booktabs tabular) or csv"
    )
    table.add_argument(
        "--kind",
        choices=KINDS,
        default="schemes",
        help="schemes: one chosen cell per scheme and model (paper Table 4, default); datasets: top-1 per "
        "dataset × augmentation (Tables 1–3); cells: every variant, α and r; trials: every seed; karakida: "
        "F-GR, B-GR, GNP, SAM and DB side by side at matched (α, r), as Karakida et al. 2023 compare them",
    )
    table.add_argument(
        "--versus",
        metavar="SIDE",
        help=f"schemes table: add each row's top-1 difference from SIDE with its 95%% interval ({SPEC_HELP})",
    )
    table.add_argument(
        "--paper",
        action="store_true",
        help="schemes and datasets tables: the paper's published errors beside ours (Tables 1 and 4)",
    )
    comparison = sub.add_parser(
        "compare",
        parents=[_common("final")],
        help="test whether one scheme's error is lower than another's",
        description="A − B in test error per model over the seeds both have: mean difference, 95% interval "
        f"(paired t; Welch's t for unpaired seeds; a paired bootstrap from {BOOTSTRAP_MIN_N} seeds on), "
        "p-value. Without A and B: GNP − Standard, GNP − SAM and SAM − Standard.",
    )
    comparison.add_argument("a", nargs="?", metavar="A", help=SPEC_HELP)
    comparison.add_argument("b", nargs="?", metavar="B", help="the other side, written as A")
    comparison.add_argument(
        "--metric", choices=("top1", "top5"), default="top1", help="top1 (default) or top5"
    )
    comparison.add_argument("--format", choices=FORMATS, default="md", help="md (default), latex or csv")
    figures = sub.add_parser(
        "figures",
        parents=[_common("best")],
        help="write the figures as PNG and PDF",
        description="Write, as PNG and PDF: per model block, error vs α with 95% intervals (alpha-), the "
        "(α, r) heatmap of mean error (heatmap-), ‖g1‖ and error per epoch (epochs-) and, where α > 1 ran, "
        "paper Figure 3: its ‖∇L‖ and error per epoch against the best α in [0, 1] (fig3-); per model, paper "
        "Figure 2: error vs α, a panel per r, a line per augmentation, standard, SAM and diverged cells "
        "marked (fig2-).",
    )
    figures.add_argument("--out", required=True, help="folder for the figure files (created if missing)")
    report = sub.add_parser(
        "report",
        parents=[_common("best")],
        help="write the paper report: report.md and a self-contained report.html",
        description="Tables 1, 2–3 and 4 as the paper lays them out, ours beside its published errors (Δ, "
        "within the seeds' spread or not), the chosen α and r, GPU-hours, the figures and the cells still missing.",
    )
    report.add_argument("--out", help="folder for the report and its figures (default: RESULTS/report)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "compare" and (args.a is None) != (args.b is None):
            raise AnalysisError("compare takes two sides, A and B, or none (GNP − Standard, GNP − SAM, ...)")
        df = _load(args)
        if args.command == "table":
            print(
                format_table(df, fmt=args.format, pick=args.pick, kind=args.kind, versus=args.versus,
                             paper=args.paper),
                end="",
            )
        elif args.command == "compare":
            print(format_comparison(_comparisons(df, args), fmt=args.format), end="")
        elif args.command == "report":
            out = args.out or default_out(args.results)
            print("\n".join(map(str, write_report(df, out, pick=args.pick, source=args.results))))
        else:
            try:
                paths = make_figures(df, args.out, pick=args.pick)
            except OSError as err:
                raise AnalysisError(
                    f"cannot write figures to {args.out} ({err}); choose another --out"
                ) from None
            print("\n".join(map(str, paths)))
        return 0
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _load(args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return load_results(args.results, on_bad="skip" if args.skip_bad else "error")
        finally:
            for warning in caught:
                print(f"warning: {warning.message}", file=sys.stderr)


def _comparisons(df: pd.DataFrame, args) -> pd.DataFrame:
    if args.a is not None:
        return compare(df, args.a, args.b, pick=args.pick, metric=args.metric)
    found = []
    for a, b in default_pairs(set(with_schemes(summarize(df, args.pick))["scheme"])):
        try:
            found.append(compare(df, a, b, pick=args.pick, metric=args.metric))
        except AnalysisError:  # the two schemes are in different model blocks
            continue
    if not found:
        raise AnalysisError(
            "no model holds two of Standard, SAM and GNP; name the sides: compare RESULTS A B"
        )
    return pd.concat(found, ignore_index=True)


if __name__ == "__main__":
    sys.exit(main())
