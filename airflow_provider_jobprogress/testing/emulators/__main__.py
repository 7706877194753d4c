"""`python -m airflow_provider_jobprogress.testing.emulators`: the same as `jobprogress-emulator`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
