#!/usr/bin/env bash
# Copy the LUMOS study's stored runs into results/lumos-study/ and write its tables there (issue 16):
#   bash benchmarks/lumos_study_publish.sh saved/lumos-study                  # the ml-100k grid
#   bash benchmarks/lumos_study_publish.sh saved/lumos-study-ml-1m ml-1m      # a confirmation (--confirm)
# The grid: runs/<cell>/runs/*.json, ml-100k-grid.md (every cell), headline.md (FedSASRec, LUMOS's former defaults
# and the three best cells by validation), ml-100k-budgets.md (at 50/100/200 rounds; rounds and bytes to 90% and
# 95% of FedSASRec) and headline-budgets.md (the same for headline.md's cells). A confirmation: <dataset>/runs/...,
# <dataset>/table.md and <dataset>/budgets.md. The study's README embeds the grid and each confirmation's tables
# between markers; the project README's copies are refreshed.
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
  EMBED=("$DATASET=$DEST/table.md" "$DATASET-budgets=$DEST/budgets.md")
else
  python benchmarks/lumos_study.py --out "$DEST/runs" --table > "$DEST/ml-100k-grid.md"
  python benchmarks/lumos_study.py --out "$DEST/runs" --headline 3 > "$DEST/headline.md"
  python benchmarks/lumos_study.py --out "$DEST/runs" --budgets > "$DEST/ml-100k-budgets.md"
  python benchmarks/lumos_study.py --out "$DEST/runs" --budgets --headline 3 > "$DEST/headline-budgets.md"
  EMBED=("grid=$DEST/ml-100k-grid.md" "headline-budgets=$DEST/headline-budgets.md")
fi
# results/lumos-study/README.md shows each table between <!-- name --> and <!-- /name -->
python - results/lumos-study/README.md "${EMBED[@]}" <<'PY'
import sys
from pathlib import Path

readme = Path(sys.argv[1])
text = readme.read_text()
for pair in sys.argv[2:]:
    name, source = pair.split("=", 1)
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + start + "\n" + Path(source).read_text().strip() + "\n" + end + rest.split(end, 1)[1]
readme.write_text(text)
PY
python -m recbole_lumos.report.readme_tables README.md
