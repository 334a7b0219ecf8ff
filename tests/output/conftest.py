"""Output fixtures: moto's S3 server (the same fixture as the job tests')."""

from tests.job.conftest import s3_server  # noqa: F401 - a fixture, found by name
