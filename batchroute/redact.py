"""Secrets out of error texts: the job's API keys and anything shaped like a bearer token."""

from __future__ import annotations

import os
import re

from batchroute.job import Job

_BEARER = re.compile(r"\bBearer\s+[^\s\"',;]+", re.IGNORECASE)
REDACTED = "[redacted]"
# A value this short is not a real key, and replacing it everywhere would garble messages.
_MIN_KEY_CHARS = 4


class Redactor:
    """Replaces each known secret in a text; built once per run from the job."""

    def __init__(self, secrets: set[str]) -> None:
        # Longest first, so a key that contains another is replaced whole.
        self._secrets = sorted((s for s in secrets if len(s) >= _MIN_KEY_CHARS), key=len)[::-1]

    @classmethod
    def from_job(cls, job: Job) -> Redactor:
        """The values of the variables every endpoint's `api_key_env` names (when set)."""
        names = {e.api_key_env for e in job.all_endpoints().values() if e.api_key_env}
        return cls({value for name in names if (value := os.environ.get(name))})

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return _BEARER.sub(f"Bearer {REDACTED}", text)
