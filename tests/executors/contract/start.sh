#!/bin/sh
# The contract-test executor: records what it sees, reports progress, and behaves as config.yaml's
# `mode` says: ok, crash, garbage (bad results), hang (waits until /out/release exists), spam (huge log).
set -u
probe=/out/probe.txt
mode=$(sed -n 's/^mode: *//p' /in/config.yaml | head -n 1)
task=$(sed -n 's/^task_id: *//p' /in/env.yaml | head -n 1)
{
  echo "uid=$(id -u)"
  grep -E ' /in | /out ' /proc/mounts | awk '{print "mount " $2 " " $4}'
  if touch /in/written 2>/dev/null; then echo "in=writable"; else echo "in=read-only"; fi
  if wget -q -T 2 -O /dev/null http://127.0.0.1:1 2>/dev/null; then echo "net=yes"; else echo "net=no"; fi
  echo "env_ok=$(test -f /in/env.yaml && echo yes || echo no)"
  echo "img_man=$(test -f /img-man/manifest.yaml && echo yes || echo no)"
} > "$probe"
mkdir -p /out/seen && cp /in/env.yaml /in/config.yaml /out/seen/
for f in train-index.tsv val-index.tsv candidate-index.tsv; do [ -f "/in/$f" ] && cp "/in/$f" /out/seen/; done
echo "executor starting in mode $mode"
printf '%s\t%s\t0.5\t2\n' "$task" "$(date +%s)" > /out/monitor.txt
if [ "$mode" = "hang" ]; then
  i=0  # a test that never releases it must not leave it running for ever
  while [ ! -f /out/release ] && [ $i -lt 900 ]; do sleep 0.2; i=$((i+1)); done
fi
case "$mode" in
  crash) echo "something went wrong" >&2; exit 3 ;;
  spam) i=0; while [ $i -lt 3000 ]; do echo "spam line $i with some padding to make it longer"; i=$((i+1)); done ;;
esac
run_training=$(sed -n 's/^run_training: *//p' /in/env.yaml)
run_mining=$(sed -n 's/^run_mining: *//p' /in/env.yaml)
run_infer=$(sed -n 's/^run_infer: *//p' /in/env.yaml)
if [ "$mode" = "garbage" ]; then
  echo "not: [valid" > /out/result.tsv; cp /out/result.tsv /out/infer-result.json
  mkdir -p /out/models; printf 'model_stages:\n  s1:\n    files: [../../etc/passwd]\n' > /out/models/result.yaml
  printf 'nonsense\tline\n' > /out/monitor.txt
  exit 0
fi
if [ "$run_training" = "true" ]; then
  mkdir -p /out/models/epoch1 /out/models/best
  echo weights1 > /out/models/epoch1/model.bin; echo weightsb > /out/models/best/model.bin
  cat > /out/models/result.yaml <<YAML
best_stage_name: best
model_stages:
  epoch1: {stage_name: epoch1, files: [model.bin], timestamp: 1, mAP: 0.25}
  best: {stage_name: best, files: [model.bin, /etc/passwd], timestamp: 2, mAP: 0.5}
YAML
fi
if [ "$run_mining" = "true" ]; then
  n=0; : > /out/result.tsv
  while read -r path; do n=$((n+1)); printf '%s\t0.%s\n' "$path" "$n" >> /out/result.tsv; done < /in/candidate-index.tsv
  echo "/etc/passwd	0.99" >> /out/result.tsv
fi
if [ "$run_infer" = "true" ]; then
  first=1; printf '{"detection": {' > /out/infer-result.json
  while read -r path; do
    [ $first -eq 1 ] || printf ', ' >> /out/infer-result.json; first=0
    printf '"%s": {"boxes": [{"box": {"x": 1, "y": 2, "w": 10, "h": 5}, "class_name": "a", "score": 0.9}]}' \
      "$(basename "$path")" >> /out/infer-result.json
  done < /in/candidate-index.tsv
  printf '}}\n' >> /out/infer-result.json
fi
printf '%s\t%s\t1\t3\n' "$task" "$(date +%s)" > /out/monitor.txt
echo "executor done"
