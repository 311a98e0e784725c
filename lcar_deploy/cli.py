"""Command-line interface (placeholder until the foundation lands)."""


def main() -> None:
    raise SystemExit("not implemented yet")
