"""HAProxy's two maps at run time, kept by the platform application (direct mode): served name ->
its application's prefix, for the models of the catalog and for the LoRA adapters being served.

The models map starts as the wrapper writes it (services/haproxy/wrapper.py, from the catalog the
pods or the local run started with); a catalog applied later (a rolling update) brings a platform
router that writes its own catalog's models into it. Adapters come and go with their directory
(services/engine/adapters.py): the platform's router lists them every refresh period. Either way
the router applies the difference to the HAProxy of its own node through its admin socket (`add
map`/`set map`/`del map`), and writes the file, which HAProxy reads again at each reload Ray makes.
An HAProxy on another node keeps what it has and leaves what it cannot place to the platform,
which answers through a handle.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from services.haproxy.rules import map_text
from services.haproxy.wrapper import write_atomically

logger = logging.getLogger("slmserve.haproxy")


def admin_command(socket_path: Path, command: str) -> str:
    """One command on an HAProxy's admin socket, and its whole answer (raises OSError)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(str(socket_path))
        connection.sendall(f"{command}\n".encode())
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


class HAProxyMap:
    def __init__(self, map_path: Path, socket_path: Path) -> None:
        self.map_path = map_path
        self.socket_path = socket_path

    @classmethod
    def on_this_node(cls, map_name: str) -> HAProxyMap | None:
        """A map of the HAProxy Ray runs on this node, with its admin socket, or None where none runs."""
        import ray

        from services.core.ray_compat import serve_constants

        constants = serve_constants()

        node = ray.get_runtime_context().get_node_id()
        config_dir = Path(constants.RAY_SERVE_HAPROXY_CONFIG_FILE_LOC).parent / node
        socket_dir = Path(constants.RAY_SERVE_HAPROXY_SOCKET_PATH).parent / node
        socket_path = socket_dir / Path(constants.RAY_SERVE_HAPROXY_SOCKET_PATH).name
        if not constants.RAY_SERVE_ENABLE_HA_PROXY or not config_dir.is_dir():
            return None
        return cls(config_dir / map_name, socket_path)

    def _command(self, command: str) -> str:
        return admin_command(self.socket_path, command)

    def loaded(self) -> dict[str, str]:
        """The map as the running HAProxy holds it."""
        entries = {}
        for line in self._command(f"show map {self.map_path}").splitlines():
            parts = line.split()
            if len(parts) == 3:  # <entry id> <key> <value>
                entries[parts[1]] = parts[2]
        return entries

    def apply(self, routes: dict[str, str]) -> None:
        """Make the file and the running HAProxy's map say `routes` (blocking: run it on a thread)."""
        write_atomically(self.map_path, map_text(routes))
        if not os.path.exists(self.socket_path):
            return  # HAProxy is (re)starting: it reads the file
        loaded = self.loaded()
        for name in loaded.keys() - routes.keys():
            self._command(f"del map {self.map_path} {name}")
        for name, prefix in routes.items():
            if name not in loaded:
                self._command(f"add map {self.map_path} {name} {prefix}")
            elif loaded[name] != prefix:
                self._command(f"set map {self.map_path} {name} {prefix}")
        if loaded != routes:
            logger.info("HAProxy's %s: %s", self.map_path.name, ", ".join(sorted(routes)) or "empty")
