# Shared by the scheduler tests: the 4-job recipe on stories260K and the byte comparison of its
# outputs with a plain run's. Needs MODEL, CALIB, W (the work folder) and fail().

recipe() {  # DIR: the recipe, outputs relative to it
  mkdir -p "$1/reports"
  cat > "$1/jobs.json" <<JSON
{"defaults": {"model": "$MODEL", "format": "dense", "group_size": 32},
 "jobs": [
  {"name": "rtn", "method": "rtn", "output": "out/rtn"},
  {"name": "gptq", "method": "gptq", "output": "out/gptq", "calib": "$CALIB", "nsamples": 8, "seqlen": 128},
  {"name": "awq", "method": "awq", "output": "out/awq", "calib": "$CALIB", "nsamples": 8, "seqlen": 128},
  {"name": "kmeans", "method": "kmeans", "output": "out/kmeans", "group_size": -1, "calib": "$CALIB", "nsamples": 8, "seqlen": 128}
 ]}
JSON
}
same_outputs() {  # DIR: its outputs equal plain/'s, tensors and config
  local m f
  for m in rtn gptq awq kmeans; do
    [ -d "$1/out/$m" ] || fail "$1/out/$m is missing"
    for f in "$W/plain/out/$m"/*.safetensors "$W/plain/out/$m/config.json"; do
      cmp -s "$f" "$1/out/$m/$(basename "$f")" || fail "$1/out/$m/$(basename "$f") differs from the plain (unsharded) run"
    done
  done
}

