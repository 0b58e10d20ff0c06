"""Process-level settings, read from SLMSERVE_* environment variables (CLI flags override them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

CATALOG_DIR = Path(__file__).parents[1] / "catalogs"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLMSERVE_", extra="ignore")

    catalog: str = Field("cpu", description="catalog name (cpu, phi35) or path to a YAML file")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    cache_dir: Path = Field(Path.home() / ".cache" / "slmserve", description="converted models, vLLM caches")
    ray_address: str = Field("local", description="'local' starts a private Ray; 'auto' joins a cluster")
    ray_num_cpus: int = Field(4, ge=1, description="logical CPUs a local Ray advertises (raised to the catalog's need)")
    ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy",
        description="haproxy: Ray Serve's HAProxy forwards HTTP straight to the router replicas; "
        "proxy: Ray Serve's Python HTTP proxy actor in between (one more hop)",
    )
    app_name: str = "slmserve"
    api_keys: str = Field("", description="'tenant:key,key,...'; with api_keys_file, turns auth on", repr=False)
    api_keys_file: Path | None = None
    media_allow_hosts: list[str] = Field(default_factory=list, description="added to the catalog's media.allow_hosts")
    media_allow_networks: list[str] = Field(
        default_factory=list, description="added to the catalog's media.allow_networks"
    )
    profile: str | None = Field(
        None,
        description="engine profile to run (services/engine/profiles.py); a pin the hardware cannot run fails"
        " the start",
    )


def resolve_catalog_path(catalog: str) -> Path:
    """A bare name picks a shipped catalog; anything else is a path."""
    shipped = CATALOG_DIR / f"{catalog}.yaml"
    if "/" not in catalog and not catalog.endswith((".yaml", ".yml")) and shipped.is_file():
        return shipped
    return Path(catalog)
