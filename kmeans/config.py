"""Settings of the service, read from ``KMEANS_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_DATA_DIR = "kmeans-data"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _choice(env: Mapping[str, str], name: str, values: dict[str, bool]) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return False
    if raw not in values:
        raise ValueError(f"{name} must be one of {', '.join(values)}, not {raw!r}")
    return values[raw]


def _name(env: Mapping[str, str], name: str, values: tuple[str, ...], default: str) -> str:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw not in values:
        raise ValueError(f"{name} must be one of {', '.join(values)}, not {raw!r}")
    return raw


DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``3600``, ``90m``, ``12h`` or ``30d`` as seconds; ValueError for anything else."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION else (text, "s")
    if not number.isdigit() or int(number) == 0:
        raise ValueError(f"{text!r} is not a duration such as 3600, 90m, 12h or 30d")
    return int(number) * DURATION[unit]


@dataclass(frozen=True)
class Settings:
    """Everything the app needs to know about its environment."""

    data_dir: Path = field(default_factory=lambda: Path(DEFAULT_DATA_DIR))
    # Bodies larger than this are refused with 413 while they stream in.
    max_upload_bytes: int = 512 * 1024 * 1024
    # A request body that sends nothing for this many seconds is dropped (408): a stalled client
    # holds a socket, never a thread, and not for ever.
    body_idle_timeout: int = 30
    max_concurrent_fits: int = field(default_factory=lambda: os.cpu_count() or 1)
    # The classic /fit answers synchronously; it gives up waiting after this long.
    fit_wait_seconds: int = 3600
    # A fit that runs longer is stopped and failed (a request may ask for less or more).
    fit_time_limit: int = 3600
    # A running fit whose process has not beaten for this long is re-queued (once) or failed.
    heartbeat_timeout: int = 15
    # Submit fits to this Dask scheduler instead of running them in local processes.
    dask_address: str | None = None
    # Hosts, IPs or CIDR ranges that webhooks may call although they are private/loopback.
    webhook_allow: tuple[str, ...] = ()
    webhook_attempts: int = 5
    webhook_max_wait: float = 8.0
    # Every request needs a bearer token, even before the first one exists (KMEANS_AUTH=required).
    # Otherwise tokens are required once any exists, and until then only local clients are served.
    auth_required: bool = False
    # Serve clients on other machines without tokens (KMEANS_INSECURE=1, or --insecure).
    insecure: bool = False
    # Lifetimes of a signed-in user's access token (short: a stolen one is soon useless) and
    # of its refresh token, in seconds.
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 86400
    # The connexion app class that serves the API (KMEANS_APP): "async" (AsyncApp, the default) or
    # "flask" (FlaskApp, whose Flask app can take routes of its own beside the API).
    app: str = "async"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``KMEANS_*`` variables, then ``overrides`` on top."""
        env = os.environ if env is None else env
        base = cls(
            data_dir=Path(env.get("KMEANS_DATA_DIR") or DEFAULT_DATA_DIR),
            max_upload_bytes=_int(env, "KMEANS_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            body_idle_timeout=_int(env, "KMEANS_BODY_IDLE_TIMEOUT", cls.body_idle_timeout),
            max_concurrent_fits=_int(env, "KMEANS_MAX_CONCURRENT_FITS", os.cpu_count() or 1),
            fit_wait_seconds=_int(env, "KMEANS_FIT_WAIT_SECONDS", cls.fit_wait_seconds),
            fit_time_limit=_int(env, "KMEANS_FIT_TIME_LIMIT", cls.fit_time_limit),
            heartbeat_timeout=_int(env, "KMEANS_HEARTBEAT_TIMEOUT", cls.heartbeat_timeout),
            dask_address=env.get("KMEANS_DASK_ADDRESS") or None,
            webhook_allow=tuple(h.strip() for h in env.get("KMEANS_WEBHOOK_ALLOW", "").split(",") if h.strip()),
            webhook_attempts=_int(env, "KMEANS_WEBHOOK_ATTEMPTS", cls.webhook_attempts),
            auth_required=_choice(env, "KMEANS_AUTH", {"auto": False, "required": True}),
            app=_name(env, "KMEANS_APP", ("async", "flask"), cls.app),
            insecure=_choice(env, "KMEANS_INSECURE", {"0": False, "1": True, "false": False, "true": True}),
            access_token_ttl=_int(env, "KMEANS_ACCESS_TOKEN_TTL", cls.access_token_ttl),
            refresh_token_ttl=_int(env, "KMEANS_REFRESH_TOKEN_TTL", cls.refresh_token_ttl),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in given:
            given["data_dir"] = Path(given["data_dir"])  # type: ignore[arg-type]
        return replace(base, **given)  # type: ignore[arg-type]
