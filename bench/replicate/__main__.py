"""`python -m bench.replicate [key=value ...]`: train the study's grid, then write its table and plots.
Keys are those of config/replicate/study.yaml; `--score-only` re-scores the runs already in runs_dir."""
import sys

from bench.replicate.study import compose_study, run_study
from utils.errors import user_errors


@user_errors
def main(argv) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    score_only = "--score-only" in argv
    study = compose_study([a for a in argv if a != "--score-only"])
    run_study(study, train=not score_only)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
