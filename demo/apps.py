from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Demo data loader. It sits above every other app (it may import any of them)."""

    name = "demo"
