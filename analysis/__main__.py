"""The paper's tables and figures from a results folder (local, or a pyarrow URI such as s3://).

    python -m analysis table results/digits-grid                          # Table 4 layout, Markdown
    python -m analysis table results/digits-grid --format latex --pick final
    python -m analysis table results/digits-grid --kind cells --format csv > cells.csv
    python -m analysis figures results/digits-grid --out figures/

Bad input (no such folder, no trial files, a corrupt or foreign file) prints one line and exits 2.
"""

import argparse
import sys
import warnings

from analysis.errors import AnalysisError
from analysis.figures import make_figures
from analysis.load import load_results
from analysis.summary import PICKS
from analysis.tables import FORMATS, KINDS, format_table


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("results", help="results folder or URI holding the trials' *.parquet files")
    common.add_argument(
        "--pick",
        choices=PICKS,
        default="best",
        help="score each trial at its best epoch (default, as the paper) or its final epoch",
    )
    common.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out corrupt or foreign .parquet files with a warning instead of stopping",
    )
    p = argparse.ArgumentParser(
        prog="python -m analysis", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    table = sub.add_parser(
        "table",
        parents=[common],
        help="print a table",
        description="Print mean ± std test errors over seeds, with the chosen α and r.",
    )
    table.add_argument(
        "--format", choices=FORMATS, default="md", help="md (default), latex (a tabular) or csv"
    )
    table.add_argument(
        "--kind",
        choices=KINDS,
        default="schemes",
        help="schemes: Standard/SAM/GNP per model (paper Table 4, default); datasets: top-1 per "
        "dataset × augmentation (Table 1); cells: every variant, α and r",
    )
    figures = sub.add_parser(
        "figures",
        parents=[common],
        help="write the figures as PNG and PDF",
        description="Write error vs α (paper Figure 2) and ‖g1‖ / error per epoch "
        "(Figure 3) for each model, as PNG and PDF.",
    )
    figures.add_argument("--out", required=True, help="folder for the figure files (created if missing)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                df = load_results(args.results, on_bad="skip" if args.skip_bad else "error")
            finally:
                for warning in caught:
                    print(f"warning: {warning.message}", file=sys.stderr)
        if args.command == "table":
            print(format_table(df, fmt=args.format, pick=args.pick, kind=args.kind), end="")
            return 0
        try:
            paths = make_figures(df, args.out, pick=args.pick)
        except OSError as err:
            raise AnalysisError(f"cannot write figures to {args.out} ({err}); choose another --out") from None
        print("\n".join(map(str, paths)))
        return 0
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
