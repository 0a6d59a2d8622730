#!/usr/bin/env bash
# Copy the LUMOS study's stored runs into results/lumos-study/ and write its tables there (issue 16):
#   bash benchmarks/lumos_study_publish.sh saved/lumos-study                  # the ml-100k grid
#   bash benchmarks/lumos_study_publish.sh saved/lumos-study-ml-1m ml-1m      # a confirmation (--confirm)
# The grid: runs/<cell>/runs/*.json, ml-100k-grid.md (every cell), headline.md (FedSASRec, LUMOS's former defaults
# and the three best cells by validation) and ml-100k-budgets.md (at 50/100/200 rounds; rounds and bytes to 90% and
# 95% of FedSASRec); README.md embeds the grid between markers. A confirmation: <dataset>/runs/..., <dataset>/table.md
# and <dataset>/budgets.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:?the study folder (--out of benchmarks/lumos_study.py)}
DATASET=${2:-}
DEST=results/lumos-study${DATASET:+/$DATASET}
for folder in "$SOURCE"/*/; do
  cell=$(basename "$folder")
  ls "$folder"runs/*.json > /dev/null 2>&1 || continue
  mkdir -p "$DEST/runs/$cell/runs" && cp "$folder"runs/*.json "$DEST/runs/$cell/runs/"
done
if [ -n "$DATASET" ]; then
  python benchmarks/lumos_study.py --out "$DEST/runs" --table > "$DEST/table.md"
  python benchmarks/lumos_study.py --out "$DEST/runs" --budgets > "$DEST/budgets.md"
  exit 0
fi
python benchmarks/lumos_study.py --out "$DEST/runs" --table > "$DEST/ml-100k-grid.md"
python benchmarks/lumos_study.py --out "$DEST/runs" --headline 3 > "$DEST/headline.md"
python benchmarks/lumos_study.py --out "$DEST/runs" --budgets > "$DEST/ml-100k-budgets.md"
python - "$DEST" <<'PY'
import sys
from pathlib import Path

dest = Path(sys.argv[1])
readme = (dest / "README.md").read_text()
start, end = readme.index("<!-- grid -->") + len("<!-- grid -->"), readme.index("<!-- /grid -->")
grid = (dest / "ml-100k-grid.md").read_text().strip()
(dest / "README.md").write_text(readme[:start] + "\n" + grid + "\n" + readme[end:])
PY
