"""Re-encrypt every value stored in an EncryptedTextField under the first FIELD_ENCRYPTION_KEY.

Rotation, without downtime:
1. set FIELD_ENCRYPTION_KEY=<new>,<old> on every process and restart them (new writes use
   <new>; both keys read);
2. run `manage.py encryption_rotate` (safe to re-run; `--check` only reports);
3. set FIELD_ENCRYPTION_KEY=<new> and restart.
"""

from django.apps import apps
from django.db import connection, transaction

from core.fields import EncryptedTextField, key_state, reencrypt
from core.management.base import ServiceCommand

BATCH = 500


def encrypted_columns():
    """(model, field) for every encrypted column of every installed model."""
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedTextField):
                yield model, field


def _rows(model, field, *, after, lock: bool):
    qn = connection.ops.quote_name
    table, pk, column = qn(model._meta.db_table), qn(model._meta.pk.column), qn(field.column)
    sql = (
        f"SELECT {pk}, {column} FROM {table} "  # noqa: S608 (names come from model metadata)
        f"WHERE {pk} > %s AND {column} IS NOT NULL AND {column} <> '' "
        f"ORDER BY {pk} LIMIT %s" + (" FOR UPDATE" if lock else "")
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [after, BATCH])
        return cursor.fetchall()


def _write(model, field, updates) -> None:
    if not updates:
        return
    qn = connection.ops.quote_name
    table, pk, column = qn(model._meta.db_table), qn(model._meta.pk.column), qn(field.column)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {table} SET {column} = %s WHERE {pk} = %s",  # noqa: S608 (model metadata)
            updates,
        )


class Command(ServiceCommand):
    help = (
        "Re-encrypt all secrets stored at rest (provider API keys, users' custom provider keys) "
        "under the first key of FIELD_ENCRYPTION_KEY. Checks first that every value is readable "
        "and changes nothing if one is not. --check only reports."
    )

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="Report only; change nothing.")

    def handle(self, *args, check: bool = False, **options):
        columns = list(encrypted_columns())
        counts = {}
        for model, field in columns:
            label = f"{model._meta.label}.{field.name}"
            states = {"current": 0, "old": 0, "unreadable": 0}
            after = 0
            while rows := _rows(model, field, after=after, lock=False):
                for _pk, stored in rows:
                    states[key_state(stored)] += 1
                after = rows[-1][0]
            counts[label] = states
            self.say(
                f"{label}: {states['current']} under the first key, {states['old']} under an "
                f"older key, {states['unreadable']} unreadable"
            )
        unreadable = sum(c["unreadable"] for c in counts.values())
        if unreadable:
            self.stderr.write(
                f"{unreadable} value(s) cannot be read with any configured key: nothing was "
                "changed. Add the missing key to FIELD_ENCRYPTION_KEY (after a comma)."
            )
            raise SystemExit(1)
        if check:
            self.stdout.write(f"OK: {sum(c['old'] for c in counts.values())} value(s) to rotate.")
            return
        rotated = 0
        for model, field in columns:
            label = f"{model._meta.label}.{field.name}"
            after = 0
            while True:
                with transaction.atomic():
                    rows = _rows(model, field, after=after, lock=True)
                    if not rows:
                        break
                    updates = [
                        (reencrypt(stored), pk) for pk, stored in rows if key_state(stored) == "old"
                    ]
                    _write(model, field, updates)
                    rotated += len(updates)
                    after = rows[-1][0]
            self.say(f"{label}: done")
        self.stdout.write(f"OK: {rotated} value(s) re-encrypted under the first key.")
