"""moto's S3 server in its own process, on 127.0.0.1, with an optional delay before every request.

The delay (milliseconds, read from DELAY_FILE at each request, 0 when absent) stands in for the round trip
to a bucket over a network: moto on the loopback answers in about a millisecond, far below a real
service's first-byte latency. It is an assumption of the benchmark, stated with its figures. Prints the
port on its first line, then serves until killed.

    python benchmarks/s3_server.py DELAY_FILE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    delay_file = Path(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)

    def delayed(environ, start_response):
        try:
            ms = float(delay_file.read_text() or 0)
        except (OSError, ValueError):
            ms = 0.0
        if ms > 0:
            time.sleep(ms / 1000)
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, delayed, threaded=True, request_handler=MotoRequestHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
