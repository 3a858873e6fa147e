"""The metrics textfile (arch.metrics): format, counting, atomic and concurrent updates."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from arch import metrics
from arch.config import HostConfig


@pytest.fixture
def config(tmp_path: Path) -> HostConfig:
    return HostConfig("/nonexistent/arch.toml",
                      metrics_file=str(tmp_path / "collector" / "arch.prom"))  # fmt: skip


def samples(config: HostConfig) -> dict[str, float]:
    return metrics.read_samples(config.metrics_file)


def test_checkpoints_restores_failures_durations_and_bytes(config: HostConfig) -> None:
    metrics.record(config, "checkpoint", seconds=0.7, image_bytes=1000)
    metrics.record(config, "checkpoint", seconds=3.0, image_bytes=500)
    metrics.record(config, "checkpoint", seconds=1.0, failure="criu")
    metrics.record(config, "restore", seconds=0.2, image_bytes=1500)
    metrics.record(config, "restore", seconds=0.0, failure="no such reason")
    found = samples(config)
    assert found['arch_checkpoints_total{result="ok"}'] == 2
    assert found['arch_checkpoints_total{result="failed"}'] == 1
    assert found['arch_failures_total{operation="checkpoint",reason="criu"}'] == 1
    assert found['arch_failures_total{operation="restore",reason="other"}'] == 1
    assert found['arch_checkpoint_duration_seconds_bucket{le="0.5"}'] == 0
    assert found['arch_checkpoint_duration_seconds_bucket{le="1"}'] == 1
    assert found['arch_checkpoint_duration_seconds_bucket{le="5"}'] == 2
    assert found['arch_checkpoint_duration_seconds_bucket{le="+Inf"}'] == 2
    assert found["arch_checkpoint_duration_seconds_sum"] == pytest.approx(3.7)
    assert found["arch_checkpoint_duration_seconds_count"] == 2
    assert found["arch_checkpoint_bytes_total"] == 1500
    assert found["arch_last_checkpoint_bytes"] == 500
    assert found["arch_restore_bytes_total"] == 1500
    assert found['arch_restores_total{result="ok"}'] == 1


def test_text_format(config: HostConfig) -> None:
    metrics.record(config, "restore", seconds=0.3, image_bytes=10)
    text = Path(config.metrics_file).read_text()
    lines = text.splitlines()
    family = "arch_restore_duration_seconds"
    assert f"# TYPE {family} histogram" in lines
    buckets = [line for line in lines if line.startswith(f"{family}_bucket")]
    assert buckets[0].startswith(f'{family}_bucket{{le="0.25"}} 0')
    assert buckets[-1] == f'{family}_bucket{{le="+Inf"}} 1'
    assert lines.index(buckets[-1]) + 1 == lines.index(f"{family}_sum 0.3")
    # Every sample's family has exactly one HELP and TYPE line, before its samples.
    types = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert stat.S_IMODE(os.stat(config.metrics_file).st_mode) == 0o644
    leftovers = sorted(os.listdir(os.path.dirname(config.metrics_file)))
    assert leftovers == [".arch.prom.lock", "arch.prom"]


def test_spot_notice(config: HostConfig) -> None:
    metrics.record_spot_notice(config, "terminate", 1_800_000_120.0, seen_at=1_800_000_000.0)
    metrics.record_spot_notice(config, "bogus", None, seen_at=5.0)
    found = samples(config)
    assert found['arch_spot_notice_seen_timestamp_seconds{action="terminate"}'] == 1_800_000_000
    assert found['arch_spot_notice_action_timestamp_seconds{action="terminate"}'] == 1_800_000_120
    assert found['arch_spot_notice_seen_timestamp_seconds{action="other"}'] == 5


def test_disabled_and_unwritable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    off = HostConfig("/x", metrics_file="")
    assert metrics.update(off, lambda samples: None) is False
    blocked = tmp_path / "file"
    blocked.write_text("")
    config = HostConfig("/x", metrics_file=str(blocked / "arch.prom"))
    metrics.record(config, "checkpoint", seconds=1.0)  # logged, never raised
    assert "metrics not written" in caplog.text


def test_foreign_and_garbled_lines_are_dropped(config: HostConfig) -> None:
    os.makedirs(os.path.dirname(config.metrics_file))
    with open(config.metrics_file, "w") as garbled:
        garbled.write('other_metric 5\narch_checkpoints_total{result="ok"} x\n'
                      'arch_checkpoints_total{result="failed"} 4\n')  # fmt: skip
    metrics.record(config, "checkpoint", seconds=1.0, failure="timeout")
    found = samples(config)
    assert found['arch_checkpoints_total{result="failed"}'] == 5
    assert "other_metric" not in found and 'arch_checkpoints_total{result="ok"}' not in found


def test_unknown_operation_is_a_bug(config: HostConfig) -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        metrics.record(config, "dump", seconds=1.0)


def _hammer(metrics_file: str, rounds: int) -> None:
    config = HostConfig("/x", metrics_file=metrics_file)
    for _ in range(rounds):
        metrics.record(config, "checkpoint", seconds=0.1, image_bytes=1)


def test_parallel_processes_lose_no_update(config: HostConfig) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_hammer, args=(config.metrics_file, 25)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0] * 6
    found = samples(config)
    assert found['arch_checkpoints_total{result="ok"}'] == 150
    assert found["arch_checkpoint_bytes_total"] == 150
