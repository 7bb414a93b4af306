"""Distinctive passwords for the tests that secrets never leak, and the grep that looks for them."""

from __future__ import annotations

from collections.abc import Iterable

#: Distinctive passwords: each must never be seen anywhere.
WRITE_PASSWORD = "Wr1te-Zebra-9f3Kq-secret"
READ_PASSWORD = "Re4d-Quokka-7hP2x-secret"
HOOK_PASSWORD = "H00k-Narwhal-5tV8m-secret"
SMTP_PASSWORD = "Smtp-Ocelot-3gW6z-secret"
SECRETS = (WRITE_PASSWORD, READ_PASSWORD, HOOK_PASSWORD, SMTP_PASSWORD)


def leaks(texts: Iterable[str]) -> list[str]:
    """Which secrets (or their distinctive middle part) occur in ``texts``."""
    found = []
    for blob in texts:
        for secret in SECRETS:
            if secret in blob or secret.split("-")[2] in blob:
                found.append(f"{secret} in {blob[:200]!r}")
    return found
