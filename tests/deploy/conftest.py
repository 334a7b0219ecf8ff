"""The deploy tests' servers: the S3 emulator of the job tests (tests/job/conftest.py)."""

from ..job.conftest import s3_server

__all__ = ["s3_server"]
