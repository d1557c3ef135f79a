#!/usr/bin/env bash
# The layers of src/ and include/quant/ (docs/architecture.md): a file may include quant headers
# of its own layer and of lower layers only. core < io < model < {methods, formats} < pipeline;
# methods and formats do not include each other. Public headers do not include spdlog.
set -uo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2
rank() { case $1 in core) echo 0;; io) echo 1;; model) echo 2;; methods|formats) echo 3;; pipeline) echo 4;; *) echo 9;; esac; }
bad=0
for f in $(find src include/quant -name '*.h' -o -name '*.cpp' | sort); do
  layer=$(echo "$f" | sed -E 's#^(src|include/quant)/([a-z]+)/.*#\2#')
  r=$(rank "$layer")
  [ "$r" = 9 ] && { echo "layering: $f is in no layer"; bad=1; continue; }
  for inc in $(grep -oE '#include "quant/[a-z]+/' "$f" | sed -E 's#.*quant/([a-z]+)/#\1#'); do
    ri=$(rank "$inc")
    if [ "$ri" -gt "$r" ] || { [ "$ri" = 3 ] && [ "$r" = 3 ] && [ "$inc" != "$layer" ]; }; then
      echo "layering: $f ($layer) includes quant/$inc/"; bad=1
    fi
  done
done
if grep -rln 'spdlog' include/quant --include='*.h' | xargs -r grep -l '#include.*spdlog' >/dev/null 2>&1; then
  echo "layering: a public header includes spdlog"; bad=1
fi
[ "$bad" = 0 ] && echo "layering: ok"
exit $bad
