"""Train and evaluate recommenders on RecBole data: ``python run_recbole_lumos.py --model=SASRec --dataset=ml-1m``."""

import sys

from recbole_lumos.cli import main

if __name__ == "__main__":
    sys.exit(main())
