"""A static web server on loopback, for the demo, the tests and the benchmarks.

The crawler is exercised against real HTTP rather than mocks: this serves a folder (a saved
site such as ../shared/corpora/hazm-docs-site) the way a plain web host does, including
`index.html` for folder URLs and the redirect from `/folder` to `/folder/`.

    python -m pipelines.testing.devserver DIR [--port N]
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class _Handler(SimpleHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, so a benchmark measures the crawler, not TCP handshakes.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("devserver.request %s", format % args)


@contextmanager
def serve_directory(root: Path, port: int = 0) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 from a background thread; yields the base URL (ending in "/").

    Port 0 picks a free port. The server stops when the block exits.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"cannot serve {root}: not a directory")
    server = ThreadingHTTPServer((LOOPBACK, port), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name=f"devserver:{root.name}", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path, help="the folder to serve")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    args = parser.parse_args(argv)
    with serve_directory(args.directory, args.port) as base_url:
        print(f"serving {args.directory} at {base_url} (Ctrl-C stops)", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
