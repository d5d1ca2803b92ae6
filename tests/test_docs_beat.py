"""The beat jobs documented in docs/architecture.md are the ones configured.

docs/architecture.md lists the jobs of `settings.CELERY_BEAT_SCHEDULE` in a table whose header
is `| job | task | schedule |`, one row per job with the name and the task in backticks. This
test fails when a configured job is missing from the table, a documented job is not configured,
or a job's task differs. (The schedule column is for readers: several intervals come from the
environment, so it is not compared.)
"""

import re
from pathlib import Path

from django.conf import settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
HEADER = re.compile(r"^\|\s*job\s*\|\s*task\s*\|\s*schedule\s*\|$")


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented_jobs() -> dict[str, str]:
    """{job name: task path} from the beat table of docs/architecture.md."""
    lines = [line.strip() for line in DOC.read_text().splitlines()]
    starts = [i for i, line in enumerate(lines) if HEADER.match(line)]
    assert len(starts) == 1, f"{DOC}: expected one '| job | task | schedule |' table"
    jobs: dict[str, str] = {}
    for line in lines[starts[0] + 2 :]:  # after the header and its --- row
        if not line.startswith("|"):
            break
        job, task, _schedule = cells(line)
        job, task = job.strip("`"), task.strip("`")
        assert job not in jobs, f"{DOC}: job {job!r} is documented twice"
        jobs[job] = task
    assert jobs, f"{DOC}: the beat table has no rows"
    return jobs


def test_beat_table_matches_the_schedule():
    documented = documented_jobs()
    configured = {name: job["task"] for name, job in settings.CELERY_BEAT_SCHEDULE.items()}
    problems = [
        *(
            f"configured but not in docs/architecture.md: {name} ({task})"
            for name, task in sorted(configured.items())
            if name not in documented
        ),
        *(
            f"documented but not in CELERY_BEAT_SCHEDULE: {name} ({task})"
            for name, task in sorted(documented.items())
            if name not in configured
        ),
        *(
            f"{name}: documented task {documented[name]}, configured {task}"
            for name, task in sorted(configured.items())
            if name in documented and documented[name] != task
        ),
    ]
    assert not problems, "docs/architecture.md's beat table is stale:\n" + "\n".join(
        f"  {problem}" for problem in problems
    )
