"""The Spot field drill: the loop notice -> checkpoint -> host end -> replacement -> restore, as
ECS and AWS Batch drive it, on two real hosts A and B (own containerd, dockerd and host name;
shared checkpoint storage; real ARCH, runc and CRIU) with the platform's parts modelled from
their documentation (harness/platform_model.py).

For each case the workload's own journal (harness/drill.py) must show that B continues from A's
last checkpoint: one token (never a fresh start), B's counters consecutive from the counter the
newest image holds (never an older image, no second live copy writing after B took over), and
no line of A after its image was published (the processes never ran past it). Each case prints
its timeline (run with -s, or tests/spot-drill.sh).
"""

from __future__ import annotations

import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.drill import DrillHost, Line, Timeline, read_journal
from harness.images import BusyboxImage
from harness.platform_model import (
    CONTAINER_EXITED,
    EXIT,
    HOST_TERMINATED,
    RETRY,
    SCHEDULER_REACTION_SECONDS,
    Attempt,
    Deployment,
    EcsAgent,
    ServiceScheduler,
    batch_decision,
)

from arch.delivery.definitions import render_definition

pytestmark = [pytest.mark.root, pytest.mark.containerd, pytest.mark.criu, pytest.mark.docker]

LEAD = 25.0  # seconds from the notice to the host's end (EC2 gives two minutes)
RESTORE_WAIT = 60.0
OPTED = {"ARCH_ENABLE": "1"}
IMAGE_NS = "moby"
PUBLISHED = ("image published", "checkpointed instead", "restored from", "waiting",
             "Spot notice", "not restored", "pending", "released", "kept", "removed", "held",
             "refused", "starting fresh", "thawed")  # fmt: skip


class Drill:
    """Hosts A and B on one shared storage, a timeline, and the journals' directory."""

    def __init__(self, a: DrillHost, b: DrillHost, shared: Path, journals: Path,
                 timeline: Timeline) -> None:  # fmt: skip
        self.a, self.b, self.shared, self.journals, self.timeline = a, b, shared, journals, timeline

    def journal(self, name: str) -> Path:
        directory = self.journals / name
        directory.mkdir(mode=0o777, exist_ok=True)
        return directory

    def finish_timeline(self) -> str:
        for host in (self.a, self.b):
            self.timeline.add_arch_log(host.name, host.node.arch.log_file, PUBLISHED,
                                       self.shared)  # fmt: skip
        text = self.timeline.render()
        print("\n" + text)
        return text


@pytest.fixture
def drill_factory(working_criu: None, arch_runc_binary: Path, real_runc_binary: Path,
                  test_image: BusyboxImage, tmp_path: Path,
                  request: pytest.FixtureRequest) -> Iterator[object]:  # fmt: skip
    hosts: list[DrillHost] = []

    def make(title: str, platform: str, platform_b: str | None = None) -> Drill:
        shared = tmp_path / "shared"
        journals = tmp_path / "journals"
        shared.mkdir(mode=0o700)
        journals.mkdir()
        timeline = Timeline(title)
        pair = []
        for name, kind in (("A", platform), ("B", platform_b or platform)):
            host = DrillHost(name, arch_runc=arch_runc_binary, real_runc=real_runc_binary,
                             shared=shared, platform=kind, restore_wait=RESTORE_WAIT,
                             timeline=timeline, work_dir=tmp_path)  # fmt: skip
            hosts.append(host)
            host.start(test_image)
            pair.append(host)
        return Drill(pair[0], pair[1], shared, journals, timeline)

    yield make
    problems = []
    for host in reversed(hosts):
        try:
            host.stop()
        except AssertionError as error:
            problems.append(str(error))
    assert not problems, problems


def wait_for_lines(journal: Path, count: int, timeout: float = 120.0) -> None:
    log = journal / "log"
    assert procs.wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= count,
                            timeout), f"{log}: the workload does not write"  # fmt: skip


def image_counter(image_dir: Path) -> int:
    """The counter the image's filesystem holds (/state/counter, written each step)."""
    with tarfile.open(image_dir / "rootfs-diff.tar") as archive:
        member = archive.extractfile("state/counter")
        assert member is not None
        return int(member.read().decode().strip())


def assert_continues(lines: list[Line], image_counter_value: int, *,
                     lost_allowed: bool = False) -> str:  # fmt: skip
    """The journal of one lineage: one token (no fresh start); A's lines, then B's, never
    interleaved (no second live copy); B's counters consecutive from right after the newest
    image's counter (never an older image); A never wrote past that image unless
    `lost_allowed` (a stop that beat the notice: that progress is lost, the image stays)."""
    assert lines, "empty journal"
    assert {line.token for line in lines} == {lines[0].token}, "a fresh start (new token)"
    hosts = [line.host for line in lines]
    assert "B" in hosts, "nothing written on B: B does not run the job"
    first_b = hosts.index("B")
    assert set(hosts[first_b:]) == {"B"}, f"A wrote after B took over: {hosts[first_b:][:40]}"
    before, after = lines[:first_b], lines[first_b:]
    first = after[0].counter
    assert first in (image_counter_value, image_counter_value + 1), (
        f"B began at {first}, the newest image holds {image_counter_value}: an older image, or "
        "not the last checkpoint"
    )
    counters = [line.counter for line in after]
    assert counters == list(range(first, first + len(counters))), (
        f"B's lines are not one writer counting on: {counters[:40]}"
    )
    past_image = [line.counter for line in before if line.counter >= first]
    if not lost_allowed:
        assert not past_image, f"A ran past its last image: {past_image}"
    last_a = before[-1].counter if before else 0
    return (f"journal: token {lines[0].token[:8]}, A wrote 1..{last_a}, image holds "
            f"{image_counter_value}, B continues {first}..{counters[-1]}")  # fmt: skip


def wait_for_time(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()))


def batch_retry_strategy() -> dict[str, object]:
    """The retry strategy of ARCH's own Batch job definition template (archctl template)."""
    definition = render_definition("batch-job", {"name": "drill", "image": "busybox"})
    strategy: dict[str, object] = definition["retryStrategy"]
    return strategy


def batch_attempt(host: DrillHost, name: str) -> Attempt:
    """How Batch records the attempt when the host goes now: a container still running (held
    frozen counts: the task is RUNNING) has no exit, its host's termination is the reason."""
    state = host.state(name)
    if state.get("Running"):
        return Attempt(HOST_TERMINATED.format(instance="i-0drill0a"), None)
    return Attempt(CONTAINER_EXITED, int(str(state.get("ExitCode"))))


# -- AWS Batch -------------------------------------------------------------------------------


def test_batch_job_is_held_and_its_retry_restores_on_b(drill_factory) -> None:  # type: ignore[no-untyped-def]
    drill = drill_factory("AWS Batch job", "batch")
    a, b = drill.a, drill.b
    journal = drill.journal("batch")
    job = {**OPTED, "AWS_BATCH_JOB_ID": "drill-batch-job-1"}
    a.start_spot_watch()
    a.run_task("attempt-1", {**job, "AWS_BATCH_JOB_ATTEMPT": "1"}, journal)
    wait_for_lines(journal, 5)
    end_at = a.post_notice(LEAD)
    image = drill.shared / IMAGE_NS / "drill-batch-job-1"
    assert procs.wait_until(lambda: (image / "metadata.json").exists(), LEAD), cr.arch_log(a.node)
    held_lines = len((journal / "log").read_text().splitlines())
    wait_for_time(end_at)
    # the job was held: still RUNNING for Batch, and it wrote nothing since its image
    assert a.state("attempt-1")["Running"] is True
    assert len((journal / "log").read_text().splitlines()) == held_lines, "the held job ran on"
    attempt = batch_attempt(a, "attempt-1")
    a.end()
    decision = batch_decision(batch_retry_strategy(), attempt, 1)
    drill.timeline.add("AWS", f"Batch: attempt 1 {attempt.status_reason!r} -> {decision}")
    assert decision == RETRY
    b.run_task("attempt-2", {**job, "AWS_BATCH_JOB_ATTEMPT": "2"}, journal)
    wait_for_lines(journal, held_lines + 5)
    summary = assert_continues(read_journal(journal / "log"), image_counter(image))
    drill.timeline.add("--", summary)
    drill.finish_timeline()


def test_batch_host_that_outlives_its_notice_thaws_the_job(drill_factory) -> None:  # type: ignore[no-untyped-def]
    """The host is still there well past the notice's time (a stop/hibernate notice, or one
    withdrawn): the held job is thawed and goes on; its image stays until it finishes, and its
    exit 0 then removes it."""
    drill = drill_factory("AWS Batch host that outlives its notice", "batch")
    a = drill.a
    journal = drill.journal("thaw")
    a.start_spot_watch("--thaw-after", "5")
    a.run_task("job", {**OPTED, "AWS_BATCH_JOB_ID": "drill-batch-job-3"}, journal)
    wait_for_lines(journal, 5)
    end_at = a.post_notice(10)
    image = drill.shared / IMAGE_NS / "drill-batch-job-3"
    assert procs.wait_until(lambda: (image / "metadata.json").exists(), 30), cr.arch_log(a.node)
    held = len((journal / "log").read_text().splitlines())
    wait_for_time(end_at)
    assert len((journal / "log").read_text().splitlines()) == held, "the held job ran on"
    drill.timeline.add("A", f"the notice's time passed; the job is still held ({held} lines)")
    wait_for_lines(journal, held + 5, timeout=120)  # thawed: it goes on
    drill.timeline.add("A", "the job writes again: thawed")
    assert (image / "metadata.json").exists(), "the image went while the job runs on"
    (journal / "finish").touch()
    assert procs.wait_until(lambda: not a.state("job")["Running"], 60)
    assert a.state("job")["ExitCode"] == 0
    drill.timeline.add("A", "the job finished (exit 0)")
    assert procs.wait_until(lambda: not image.exists(), 60), cr.arch_log(a.node)[-3000:]
    drill.timeline.add("A", "its image removed")
    lines = read_journal(journal / "log")
    assert {line.token for line in lines} == {lines[0].token}
    assert [line.counter for line in lines] == list(range(1, len(lines) + 1))
    assert {line.host for line in lines} == {"A"}
    spot_watch_log = (a.work_dir / "spot-watch-A.log").read_text()
    assert "thawing held jobs" in spot_watch_log, spot_watch_log[-2000:]
    drill.finish_timeline()


def test_batch_job_that_exits_at_the_notice_fails_in_the_model(drill_factory) -> None:  # type: ignore[no-untyped-def]
    """The control: on a host set up for ECS (the job's container ends at its checkpoint),
    Batch records an ordinary exit 137 and the job definition's rules fail the job. This is the
    behaviour the `batch` platform exists to avoid; it shows the model does not retry
    everything."""
    drill = drill_factory("AWS Batch job on an ECS-configured host (control)", "ecs")
    a = drill.a
    journal = drill.journal("batch-control")
    a.start_spot_watch()
    a.run_task("attempt-1", {**OPTED, "AWS_BATCH_JOB_ID": "drill-batch-job-2"}, journal)
    wait_for_lines(journal, 5)
    a.post_notice(LEAD)
    assert procs.wait_until(lambda: not a.state("attempt-1")["Running"], LEAD)
    attempt = batch_attempt(a, "attempt-1")
    decision = batch_decision(batch_retry_strategy(), attempt, 1)
    drill.timeline.add("AWS", f"Batch: attempt 1 {attempt.status_reason!r} exit "
                              f"{attempt.exit_code} -> {decision}")  # fmt: skip
    drill.finish_timeline()
    assert attempt == Attempt(CONTAINER_EXITED, 137)
    assert decision == EXIT


# -- ECS services ----------------------------------------------------------------------------


def run_service(drill: Drill, deployment: Deployment, *, ballast_mib: int = 0,
                reaction: float = SCHEDULER_REACTION_SECONDS,
                pool: str = "drill-svc") -> tuple[list[str], Path]:  # fmt: skip
    """A service of `deployment.desired` tasks on A, drained by a notice; returns the
    replacements' names on B and the service's journal (one file, a token per replica).
    `reaction`: seconds from DRAINING to the scheduler's first step. With reaction 0 the agent
    sees the notice after spot-watch (the other order, a stop before the marker, is the
    SIGTERM case's)."""
    a, b = drill.a, drill.b
    journal = drill.journal(pool)
    env = {**OPTED, "ARCH_CHECKPOINT_POOL": pool}
    a.start_spot_watch()
    names = [f"svc-a-{index + 1}" for index in range(deployment.desired)]
    for name in names:
        a.run_task(name, env, journal, ballast_mib=ballast_mib)
    wait_for_lines(journal, 3 * deployment.desired)
    marker = a.node.arch.state_dir / ".spot-notice"
    agent = EcsAgent(a.imds.endpoint, a.stop_container, spot_draining=True,
                     record=lambda what: drill.timeline.add(a.name, what),
                     sees_notice_after=marker.exists if reaction == 0 else None)  # fmt: skip
    scheduler = ServiceScheduler(
        deployment,
        start_replacement=lambda index: b.run_task(f"svc-b-{index + 1}", env, journal,
                                                   ballast_mib=ballast_mib),
        stop_task=agent.stop_task,
        record=lambda what: drill.timeline.add("AWS", what),
    )
    replaced: list[str] = []
    done = threading.Event()

    def drain() -> None:
        try:
            time.sleep(reaction)
            replaced.extend(scheduler.drain(names))
        finally:
            done.set()

    agent.on_draining = lambda: threading.Thread(target=drain, daemon=True).start()
    agent.start()
    end_at = a.post_notice(LEAD if deployment.desired < 10 else 3 * LEAD)
    assert done.wait(end_at - time.time() + 300), "the scheduler did not finish"
    agent.stop()
    wait_for_time(end_at)
    a.end()
    return [f"svc-b-{index + 1}" for index in range(len(replaced))], journal


def assert_service_continues(drill: Drill, journal: Path, replicas: int) -> list[str]:
    """Every replica's lineage goes on on B from a pool image of A's (no token lost, none
    new, none twice)."""
    wait_for_lines(journal, len((journal / "log").read_text().splitlines()) + 3 * replicas)
    lines = read_journal(journal / "log")
    by_token: dict[str, list[Line]] = {}
    for line in lines:
        by_token.setdefault(line.token, []).append(line)
    assert len(by_token) == replicas, f"{len(by_token)} lineages for {replicas} replicas"
    summaries = []
    for token, own in by_token.items():
        hosts = [line.host for line in own]
        assert "B" in hosts, f"replica {token[:8]} does not run on B"
        first_b = hosts.index("B")
        assert set(hosts[first_b:]) == {"B"}, f"replica {token[:8]}: A wrote after B took over"
        before = [line.counter for line in own[:first_b]]
        after = [line.counter for line in own[first_b:]]
        assert after == list(range(after[0], after[0] + len(after))), after[:30]
        assert not before or after[0] in (before[-1], before[-1] + 1), (before[-3:], after[:3])
        summaries.append(f"{token[:8]}: A ..{before[-1] if before else 0}, B {after[0]}..")
    return summaries


def test_ecs_service_100_200_replacement_waits_for_the_image(drill_factory) -> None:  # type: ignore[no-untyped-def]
    drill = drill_factory("ECS service, minimumHealthyPercent 100, maximumPercent 200", "ecs")
    # The scheduler acts at once and the job's checkpoint takes seconds: under load the
    # replacement's create comes while A's image is still being written and waits for it; on
    # a quiet machine A may publish first, and the create claims the image at once. Either way
    # B restores A's newest image (one lineage, no fresh start).
    replacements, journal = run_service(drill, Deployment(1, 100, 200), ballast_mib=384,
                                        reaction=0.0)  # fmt: skip
    assert replacements == ["svc-b-1"]
    for summary in assert_service_continues(drill, journal, 1):
        drill.timeline.add("--", summary)
    log_b = cr.arch_log(drill.b.node)
    assert "restored from" in log_b, log_b[-3000:]
    how = ("the create waited for the image on the way" if "waiting" in log_b
           else "A's image was published before the create: claimed at once")  # fmt: skip
    drill.timeline.add("B", how)
    drill.finish_timeline()


def test_ecs_service_50_100_stops_first_then_replaces(drill_factory) -> None:  # type: ignore[no-untyped-def]
    drill = drill_factory("ECS service, minimumHealthyPercent 50, maximumPercent 100", "ecs")
    replacements, journal = run_service(drill, Deployment(2, 50, 100))
    assert replacements == ["svc-b-1", "svc-b-2"]
    for summary in assert_service_continues(drill, journal, 2):
        drill.timeline.add("--", summary)
    drill.finish_timeline()


def test_twenty_service_tasks_on_a_all_move_to_b(drill_factory) -> None:  # type: ignore[no-untyped-def]
    drill = drill_factory("ECS service of 20 tasks on A, 100/200", "ecs")
    replacements, journal = run_service(drill, Deployment(20, 100, 200))
    assert len(replacements) == 20
    summaries = assert_service_continues(drill, journal, 20)
    drill.timeline.add("--", f"20 lineages continue on B: {', '.join(summaries[:3])}, ...")
    marker_report = (drill.a.work_dir / "spot-watch-A.log").read_text()
    assert "not saved" not in marker_report, marker_report[-3000:]
    drill.finish_timeline()


# -- standalone tasks, SIGTERM, restart policies ---------------------------------------------


def test_standalone_task_is_saved_and_a_new_run_restores_on_b(drill_factory) -> None:  # type: ignore[no-untyped-def]
    """Draining leaves standalone tasks alone ("Draining Amazon ECS container instances":
    "standalone tasks in the PENDING or RUNNING state are unaffected"); spot-watch saves it,
    and a new run of the task (same ARCH_CHECKPOINT_ID) on B restores."""
    drill = drill_factory("standalone ECS task", "ecs")
    a, b = drill.a, drill.b
    journal = drill.journal("task")
    env = {**OPTED, "ARCH_CHECKPOINT_ID": "drill-task"}
    a.start_spot_watch()
    a.run_task("task-a", env, journal)
    wait_for_lines(journal, 5)
    end_at = a.post_notice(LEAD)
    assert procs.wait_until(lambda: not a.state("task-a")["Running"], LEAD)
    assert a.state("task-a")["ExitCode"] == 137
    drill.timeline.add("A", "task-a exited 137 (checkpointed by spot-watch)")
    wait_for_time(end_at)
    a.end()
    image = drill.shared / IMAGE_NS / "drill-task"
    b.run_task("task-b", env, journal)
    summary = assert_continues(_after_lines(journal, 5), image_counter(image))
    drill.timeline.add("--", summary)
    drill.finish_timeline()


def _after_lines(journal: Path, more: int) -> list[Line]:
    wait_for_lines(journal, len((journal / "log").read_text().splitlines()) + more)
    return read_journal(journal / "log")


def test_a_job_exiting_0_on_sigterm_before_the_marker_keeps_its_image(drill_factory) -> None:  # type: ignore[no-untyped-def]
    """The agent's stop beats spot-watch's marker by a second: the job handles SIGTERM and
    exits 0. That is not a finish: its last image stays, and the replacement restores it (the
    progress since that image is lost, as with any stop that comes before the checkpoint)."""
    drill = drill_factory("job exiting 0 on SIGTERM, stopped before the notice marker", "ecs")
    a, b = drill.a, drill.b
    journal = drill.journal("sigterm")
    env = {**OPTED, "ARCH_CHECKPOINT_ID": "drill-sigterm"}
    a.run_task("job-a", env, journal, extra=[], exit_0_on_term=True)
    wait_for_lines(journal, 5)
    # an earlier checkpoint (e.g. a previous notice that was withdrawn), then the job goes on
    completed = a.docker.docker("ps", "-q", "--no-trunc", "--filter", "name=job-a")
    container = completed.stdout.strip()
    scratch = a.work_dir / "scratch"
    scratch.mkdir()
    a.node.ctr("task", "checkpoint", "--exit", "--image-path", str(scratch), container,
               namespace=IMAGE_NS)  # fmt: skip
    assert procs.wait_until(lambda: not a.state("job-a")["Running"], 60)
    a.docker.docker("start", "job-a")
    drill.timeline.add("A", "earlier checkpoint of job-a, then docker start (restored)")
    wait_for_lines(journal, len((journal / "log").read_text().splitlines()) + 5)
    image = drill.shared / IMAGE_NS / "drill-sigterm"
    kept = image_counter(image)
    agent = EcsAgent(a.imds.endpoint, a.stop_container, spot_draining=True,
                     record=lambda what: drill.timeline.add(a.name, what))  # fmt: skip
    agent.on_draining = lambda: agent.stop_task("job-a")
    agent.start()
    a.start_spot_watch()
    end_at = a.post_notice(LEAD, watcher_too=False)
    assert agent.draining.wait(30)
    time.sleep(1.0)  # spot-watch sees the notice a second after the agent
    a.show_notice_to_watcher()
    drill.timeline.add("A", "spot-watch's next poll sees the notice")
    assert procs.wait_until(lambda: not a.state("job-a")["Running"], 60)
    assert a.state("job-a")["ExitCode"] == 0
    drill.timeline.add("A", "job-a exited 0 on SIGTERM")
    agent.stop()
    assert procs.wait_until(lambda: "stop during a Spot notice" in cr.arch_log(a.node)
                            or "exited 0" in cr.arch_log(a.node), 30)  # fmt: skip
    a.docker.docker("rm", "job-a")  # the agent removes the stopped task's container: delete
    assert (image / "metadata.json").exists(), cr.arch_log(a.node)[-3000:]
    assert image_counter(image) == kept
    wait_for_time(end_at)
    a.end()
    b.run_task("job-b", env, journal, exit_0_on_term=True)
    summary = assert_continues(_after_lines(journal, 5), kept, lost_allowed=True)
    drill.timeline.add("--", summary)
    drill.finish_timeline()


def test_a_restart_policy_never_restores_on_the_doomed_host(drill_factory) -> None:  # type: ignore[no-untyped-def]
    drill = drill_factory("container with a restart policy", "ecs")
    a, b = drill.a, drill.b
    journal = drill.journal("restart")
    env = {**OPTED, "ARCH_CHECKPOINT_ID": "drill-restart"}
    a.start_spot_watch()
    a.run_task("always-a", env, journal, extra=["--restart", "always"])
    wait_for_lines(journal, 5)
    end_at = a.post_notice(LEAD)
    image = drill.shared / IMAGE_NS / "drill-restart"
    assert procs.wait_until(lambda: (image / "metadata.json").exists(), LEAD)
    checkpointed = image_counter(image)
    wait_for_time(end_at)
    log_a = cr.arch_log(a.node)
    a.end()
    restores_on_a = log_a.count("restored from")
    assert restores_on_a == 0, log_a[-3000:]
    assert "Spot notice is active on this host" in log_a, log_a[-3000:]
    b.run_task("always-b", env, journal)
    summary = assert_continues(_after_lines(journal, 5), checkpointed)
    drill.timeline.add("--", summary)
    drill.finish_timeline()

