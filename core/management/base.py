"""Base for operator commands: a domain error becomes one line on stderr and exit status 1."""

from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError


class ServiceCommand(BaseCommand):
    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except DomainError as exc:
            raise CommandError(exc.message) from exc

    def say(self, message: str) -> None:
        """Progress and confirmations go to stderr; stdout carries only the command's result."""
        self.stderr.write(message, style_func=self.style.SUCCESS)
