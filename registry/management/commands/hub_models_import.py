import json
from pathlib import Path

from django.core.management.base import CommandError

from core.management.base import ServiceCommand
from registry import services


def read_records(path: Path) -> list:
    """A JSON array, or JSON lines (one object per line; blank lines ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from exc
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        return records
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path}: line {number} is not valid JSON: {exc.msg}") from exc
    return records


class Command(ServiceCommand):
    help = (
        "Import hub models from a JSON array or JSON lines of objects with the Hub's field "
        "names (id, pipeline_tag, tags, author, adapterWeightsPath). Idempotent; all or "
        "nothing: a bad record is reported with its position and nothing is written."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)

    def handle(self, *args, file: Path, **options):
        records = read_records(file)
        if not isinstance(records, list):
            raise CommandError(f"{file}: expected a JSON array of objects, or JSON lines")

        def progress(done: int, total: int) -> None:
            if total > services.IMPORT_CHUNK:
                self.stderr.write(f"  {done}/{total} models")

        result = services.hub_models_import(records=records, progress=progress)
        self.say(
            f"Imported {len(records)} record(s) from {file}: {result.created} created, "
            f"{result.updated} updated, {result.unchanged} unchanged."
        )
        self.stdout.write(
            json.dumps(
                {
                    "created": result.created,
                    "updated": result.updated,
                    "unchanged": result.unchanged,
                }
            )
        )
