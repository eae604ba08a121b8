#!/usr/bin/env bash
# Renders what `dvc plots diff` shows for two short experiments (AdamW + warm-up, SGD + cosine) to docs/dvc-plots-diff.png, offline.
# Needs node/npm (vega + vega-lite from npm, no CDN) and chromium; run from the repository root with .venv set up (`make`).
set -euo pipefail
root=$PWD; out="$root/docs/dvc-plots-diff.png"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export PATH="$root/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser)}
npm install --silent --no-audit --no-fund --prefix "$tmp/npm" vega@6.4.0 vega-lite@6.4.3 >/dev/null

# The pipeline as it is in the working tree, in a git repository of its own, made small enough to train in seconds.
mkdir -p "$tmp/repo"
tar -c --exclude=__pycache__ --exclude='*.pyc' dvc.yaml params.yaml .dvcignore .gitignore .dvc/config .dvc/.gitignore .dvc/plots \
  stages kiwi_pipe_optim | tar -x -C "$tmp/repo"
cd "$tmp/repo"
python - <<'EOF'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["trainer"]["max_epochs"] = 3
p["data"]["init_args"].update(limit=400, batch_size=16)  # 320 training rows: 20 steps an epoch, 60 in all
p["model"]["init_args"].update(d_model=16, nhead=2, num_layers=1, dim_feedforward=32)
p["mlflow"]["enabled"] = False  # the picture is DVC's; no MLflow store needed
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
EOF
git init -q && git add -A && git -c user.name=docs -c user.email=docs@localhost commit -qm "plots demo"
run() { dvc exp run "$@" >>"$tmp/exp.log" 2>&1 || { tail -40 "$tmp/exp.log"; exit 1; }; }
run -n adamw-warmup
run -n sgd-cosine -S optimizer.class_name=sgd -S optimizer.learning_rate=0.1 -S optimizer.encoder_learning_rate=0.05 \
  -S +optimizer.scheduler=cosine
dvc plots diff adamw-warmup sgd-cosine --json >"$tmp/diff.json"

# DVC's own vega-lite specs (data inline), compiled and rendered to SVG by vega in node, laid out 2x2 in one page.
cat >"$tmp/npm/render.mjs" <<'EOF'
import fs from 'node:fs'; import * as vega from 'vega'; import * as vl from 'vega-lite';
const d = JSON.parse(fs.readFileSync(process.argv[2])).data;
let body = '', W = 0, H = 40;
for (const dir of ['plots/lr', 'plots/schedule']) {
  let w = 0, h = 0; body += '<div class="row">';
  for (const g of ['default', 'encoder']) {
    const spec = vl.compile(d[`${dir}/${g}.csv`][0].content).spec;
    const svg = await new vega.View(vega.parse(spec), {renderer: 'none'}).toSVG();
    body += svg; w += +svg.match(/width="([\d.]+)"/)[1]; h = Math.max(h, +svg.match(/height="([\d.]+)"/)[1]);
  }
  body += '</div>'; W = Math.max(W, w); H += h + 8;
}
const css = 'body{margin:0;padding:0 8px;background:#fff;font:14px sans-serif;zoom:0.9}.row{display:flex;margin-bottom:8px}';
fs.writeFileSync(process.argv[3], `<html><style>${css}</style><body><p style="margin:0;padding:10px 0">` +
  '<code>dvc plots diff adamw-warmup sgd-cosine</code>: logged LR (top), planned schedule (bottom)</p>' + body);
console.log(`${Math.ceil((W + 16) * 0.9)},${Math.ceil(H * 0.9)}`);
EOF
size=$(node "$tmp/npm/render.mjs" "$tmp/diff.json" "$tmp/page.html")
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$size" \
  --screenshot="$out" "file://$tmp/page.html" >/dev/null 2>&1
echo "wrote ${out#"$root"/} ($size)"
