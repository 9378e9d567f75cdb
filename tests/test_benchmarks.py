"""The comparison suite's arithmetic: medians, best peers, ratios and PASS/FAIL lines.

The suite itself runs for minutes and installs peers, so CI checks only the part that turns
measurements into verdicts, on measurements made up here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
compare = pytest.importorskip("compare")

MB = 1_000_000


def _op(wall: float, rss_mb: float = 50) -> dict:
    return {"wall": wall, "maxrss": int(rss_mb * MB)}


def _tool(ingest: list[float], stored_mb: float, restore: float, rss_mb: float = 50) -> dict:
    return {"ingest": [_op(w, rss_mb) for w in ingest], "stored": {"bytes": stored_mb * MB},
            "restore": _op(restore, rss_mb)}


def _baselines(copy: list[float], copy_restore: float, cp: float) -> dict:
    return {"copy_ingest": copy, "sha256sum": [_op(1.0) for _ in copy],
            "copy_restore": copy_restore, "cp_restore": _op(cp)}


def _series() -> list[dict]:
    def versions(labels: list[str]) -> list[dict]:
        return [{"label": v, "size": 1, "files": 1, "changed": [], "removed": []}
                for v in labels]

    return [
        {"name": "minilm", "title": "real", "versions": versions(["v1", "v2"]), "info": {}},
        {"name": "synthetic", "title": "synthetic bf16 1 GiB, v1 + v2",
         "versions": versions(["v1", "v2"]), "info": {}},
    ]


def _run(cas_v2: float, cas_restore: float) -> dict:
    return {
        "minilm": {
            "tools": {"cas": _tool([0.5, 0.4], 85.0, 0.3, rss_mb=120),
                      "borg": _tool([0.7, 0.5], 100.0, 0.5),
                      "restic": _tool([1.0, 0.9], 110.0, 0.8),
                      "git-lfs": _tool([0.6, 0.6], 400.0, 0.2)},
            "baselines": _baselines([0.1, 0.1], 0.05, 0.02),
        },
        "synthetic": {
            "tools": {"cas": _tool([2.0, cas_v2], 700.0, cas_restore, rss_mb=140),
                      "borg": _tool([4.0, 2.0], 900.0, 4.0),
                      "restic": _tool([6.0, 3.0], 1000.0, 3.0)},
            "baselines": _baselines([1.0, 1.0], 0.7, 0.3),
        },
    }


def test_medians_best_peers_and_verdicts() -> None:
    tools = ["cas", "borg", "restic", "git-lfs"]
    runs = [_run(1.1, 1.7), _run(1.3, 1.9), _run(1.2, 1.5)]
    summary = compare.summarize(_series(), runs, tools)
    cas = summary["synthetic"]["tools"]["cas"]
    assert cas["ingest"] == [2.0, 1.2]  # medians of each version's runs
    assert cas["ingest_samples"][1] == [1.1, 1.3, 1.2]
    assert cas["restore"] == 1.7
    targets = {t["target"]: t for t in compare.compute_targets(summary, tools[1:])}

    stored = targets["real-model series stored <= 0.85x best of restic/borg"]
    assert stored["value"] == pytest.approx(0.85) and stored["pass"]  # at the limit passes
    assert "borg" in stored["detail"]

    v2 = targets["ingest of the 5%-changed v2 <= 0.6x fastest peer"]
    assert v2["value"] == pytest.approx(1.2 / 2.0) and v2["pass"]

    restore = targets["restore of the last version (synthetic v2) <= 0.6x fastest peer"]
    assert restore["value"] == pytest.approx(1.7 / 3.0) and restore["pass"]
    assert "restic" in restore["detail"]  # restic restores faster than borg here

    minilm = targets["restore of the last version (minilm v2) <= 0.6x fastest peer"]
    assert minilm["value"] == pytest.approx(0.3 / 0.2) and not minilm["pass"]

    cold = targets["cold ingest of the 1 GiB file <= 1.0x copy+fsync"]
    assert cold["value"] == pytest.approx(2.0) and not cold["pass"]

    rss = targets["peak RSS <= 150 MB in every cas operation"]
    assert rss["value"] == pytest.approx(140) and rss["pass"]

    lines = compare.target_lines(list(targets.values()))
    assert sum(line.startswith("FAIL") for line in lines) == sum(
        not t["pass"] for t in targets.values())


def test_a_slower_cas_fails_the_same_target() -> None:
    tools = ["cas", "borg", "restic"]
    runs = [_run(1.5, 1.7)]
    summary = compare.summarize(_series(), runs, tools)
    targets = {t["target"]: t for t in compare.compute_targets(summary, tools[1:])}
    assert not targets["ingest of the 5%-changed v2 <= 0.6x fastest peer"]["pass"]


def test_spread_lists_every_run() -> None:
    tools = ["cas", "borg"]
    runs = [_run(1.1, 1.7), _run(1.3, 1.9)]
    doc = {"summary": compare.summarize(_series(), runs, tools)}
    text = "\n".join(compare.spread_lines(doc))
    assert "1.10, 1.30" in text and "1.70, 1.90" in text


def test_bench_gc_smoke(tmp_path: Path) -> None:
    """bench_gc on a tiny store: gc reads chunk lists but no chunk, reclaims what half the
    versions left unreachable, and the store verifies clean (main asserts these in --smoke)."""
    bench_gc = pytest.importorskip("bench_gc")
    results = bench_gc.main(["--smoke", "--workdir", str(tmp_path)])
    assert results["dry_chunk_reads"] == 0 and results["now_chunk_reads"] == 0
    assert results["dry_list_bytes"] > 0 and results["now_list_bytes"] > 0  # reads were counted
    assert results["oldest_reclaimed_share"] >= 0.98
    assert all(passed for _, passed, correctness in results["checks"] if correctness)


def test_bench_sync_smoke(tmp_path: Path) -> None:
    """bench_sync with tiny data over a real loopback sshd: a fine-tune's push sends about
    what its add stored, and every pushed or pulled model arrives intact (main asserts the
    correctness checks in --smoke)."""
    import shutil

    from sshd import require_sshd

    require_sshd()
    for tool in ("rsync", "git-upload-pack"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    bench_sync = pytest.importorskip("bench_sync")
    results = bench_sync.main(["--smoke", "--workdir", str(tmp_path)])
    assert "skipped" not in results, results
    assert 0 < results["real_directory_bytes_sent"] <= 1.1 * results["real_added"]
    assert results["pull_bytes_sent"] < results["first_push_bytes_sent"] / 2
    assert all(passed for _, passed, correctness in results["checks"] if correctness)


def test_bench_bundle_smoke(tmp_path: Path) -> None:
    """bench_bundle with tiny data: a fine-tune's incremental bundle is about what its add
    stored, the 5%-changed v2's bundle is far smaller than v1's, and every bundle imports into
    a store that verifies (main asserts the correctness checks in --smoke)."""
    bench_bundle = pytest.importorskip("bench_bundle")
    results = bench_bundle.main(["--smoke", "--workdir", str(tmp_path)])
    if "real_added" in results:  # the real model's package is installed
        assert 0 < results["real_bundle_bytes"] <= 1.1 * results["real_added"]
        assert results["real_bundle_share_of_file"] <= 0.10
    assert 0 < results["changed_bundle_bytes"] < results["changed_file_bytes"] / 4
    assert results["import_rss"] > 0 and results["create_rss"] > 0
    assert all(passed for _, passed, correctness in results["checks"] if correctness)


@pytest.mark.parametrize("script", ["bench_hooks.py", "bench_lfs.py", "bench_hub.py"])
def test_integration_benchmarks_run_in_smoke_mode(script: str, tmp_path: Path) -> None:
    """The issue-13 and issue-14 benchmarks still run end to end (tiny data; their own
    correctness checks decide the exit status; targets are not judged in --smoke)."""
    import shutil
    import subprocess

    if script == "bench_lfs.py" and shutil.which("git-lfs") is None:
        pytest.skip("git-lfs is not installed")
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / script
    r = subprocess.run([sys.executable, str(bench), "--smoke"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
