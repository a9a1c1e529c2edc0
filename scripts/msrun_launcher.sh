#!/usr/bin/env bash
# Start a glm3 job on several processes with MindSpore's msrun, with the positional
# arguments of MindFormers' scripts/msrun_launcher.sh (its defaults too: 8 workers,
# port 8118, logs in output/msrun_log). It hands over to `glm3 launch`.
#
#   bash scripts/msrun_launcher.sh "EXECUTE_ORDER"                                   # 8 processes on this node
#   bash scripts/msrun_launcher.sh "EXECUTE_ORDER" WORKER_NUM                        # WORKER_NUM processes
#   bash scripts/msrun_launcher.sh "EXECUTE_ORDER" WORKER_NUM MASTER_PORT LOG_DIR JOIN CLUSTER_TIME_OUT
#   bash scripts/msrun_launcher.sh "EXECUTE_ORDER" WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT \
#        NODE_RANK LOG_DIR JOIN CLUSTER_TIME_OUT                                      # one call per node
#
# EXECUTE_ORDER is a glm3 sub-command ("finetune --config configs/glm3/run_glm3_6b_finetune.yaml",
# "glm3 finetune ..." works too) or a Python script with its arguments. Set PYTHON to
# choose the interpreter (default: python on PATH, i.e. the active environment).
set -euo pipefail

WORKER_NUM=8
LOCAL_WORKER=8
MASTER_ADDR="127.0.0.1"
MASTER_PORT=8118
NODE_RANK=""
LOG_DIR="output/msrun_log"
JOIN="False"
CLUSTER_TIME_OUT=7200
PYTHON="${PYTHON:-python}"

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 1
}

case $# in
  1) ;;
  2) WORKER_NUM=$2; LOCAL_WORKER=$2 ;;
  6) WORKER_NUM=$2; LOCAL_WORKER=$2; MASTER_PORT=$3; LOG_DIR=$4; JOIN=$5; CLUSTER_TIME_OUT=$6 ;;
  9) WORKER_NUM=$2; LOCAL_WORKER=$3; MASTER_ADDR=$4; MASTER_PORT=$5; NODE_RANK=$6; LOG_DIR=$7; JOIN=$8
     CLUSTER_TIME_OUT=$9 ;;
  *) usage ;;
esac

for value in "$WORKER_NUM" "$LOCAL_WORKER" "$MASTER_PORT" "$CLUSTER_TIME_OUT"; do
  [[ $value =~ ^[0-9]+$ ]] || { echo "error: $value is not a number" >&2; exit 1; }
done
if (( LOCAL_WORKER == 0 || WORKER_NUM % LOCAL_WORKER != 0 )); then
  echo "error: worker_num $WORKER_NUM must be a multiple of local_worker $LOCAL_WORKER (same count on every node)" >&2
  exit 1
fi

ARGS=(--nproc "$LOCAL_WORKER" --nnodes $((WORKER_NUM / LOCAL_WORKER)) --master-addr "$MASTER_ADDR"
      --master-port "$MASTER_PORT" --log-dir "$LOG_DIR" --cluster-time-out "$CLUSTER_TIME_OUT")
[[ -n $NODE_RANK ]] && ARGS+=(--node-rank "$NODE_RANK")
[[ $JOIN == "False" || $JOIN == "false" ]] && ARGS+=(--no-join)
[[ -n ${GLM3_LAUNCH_DRY_RUN:-} ]] && ARGS+=(--dry-run)

# shellcheck disable=SC2086  # EXECUTE_ORDER is split into words on purpose, as MindFormers' script does
exec "$PYTHON" -m glm3_mindspore launch "${ARGS[@]}" -- $1
