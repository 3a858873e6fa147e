#!/bin/bash
# The Spot field drill, for a person to watch: hosts A and B (their own containerd, dockerd and
# host name) on one checkpoint storage, real ARCH, runc and CRIU, and the model of the AWS parts
# (tests/integration/harness/platform_model.py). Each case prints its timeline.
#
#   tests/spot-drill.sh [CASE...]     CASE: batch batch-thaw batch-control service-100-200 service-50-100
#                                           twenty standalone sigterm restart-policy (default: all)
#
# Needs root and the installed appliance (bash ansible/install.sh): the drill starts its own
# daemons and removes everything it started. ARCH_RUNC selects another arch-runc to drill.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${ARCH_DRILL_PYTHON:-/opt/arch/venv/bin/python}
declare -A filter=(
    [batch]=test_batch_job_is_held_and_its_retry_restores_on_b
    [batch-thaw]=test_batch_host_that_outlives_its_notice_thaws_the_job
    [batch-control]=test_batch_job_that_exits_at_the_notice_fails_in_the_model
    [service-100-200]=test_ecs_service_100_200_replacement_waits_for_the_image
    [service-50-100]=test_ecs_service_50_100_stops_first_then_replaces
    [twenty]=test_twenty_service_tasks_on_a_all_move_to_b
    [standalone]=test_standalone_task_is_saved_and_a_new_run_restores_on_b
    [sigterm]=test_a_job_exiting_0_on_sigterm_before_the_marker_keeps_its_image
    [restart-policy]=test_a_restart_policy_never_restores_on_the_doomed_host
)
selected=()
for case in "$@"; do
    if [ -z "${filter[$case]:-}" ]; then
        echo "spot-drill: unknown case $case (known: ${!filter[*]})" >&2
        exit 2
    fi
    selected+=("${filter[$case]}")
done
expression=$(IFS='|'; echo "${selected[*]:-}")
args=(-p no:cacheprovider -s -q tests/integration/test_spot_drill.py)
if [ -n "$expression" ]; then
    args+=(-k "${expression//|/ or }")
fi
cd "$repo"
# The daemons' own chatter goes to the test's logs; the timelines and the verdicts stay.
exec "$python" -m pytest "${args[@]}"
