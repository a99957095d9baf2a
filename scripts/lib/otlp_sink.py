"""An OTLP/gRPC trace collector that takes every export and keeps nothing: the
benchmarks' collector (scripts/bench-overhead.sh, configuration `traced`).

    python otlp_sink.py PORT      (prints the bytes it took on SIGTERM)
"""

import signal
import sys
import threading
from concurrent import futures

import grpc

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
taken = {"exports": 0, "bytes": 0}
lock = threading.Lock()


def export(request: bytes, context) -> bytes:
    with lock:
        taken["exports"] += 1
        taken["bytes"] += len(request)
    return b""  # an empty ExportTraceServiceResponse


class Sink(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method == EXPORT:
            return grpc.unary_unary_rpc_method_handler(export)
        return None


server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((Sink(),))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()


def stop(*_):
    print(f"otlp sink: {taken['exports']} exports, {taken['bytes']} bytes", file=sys.stderr)
    server.stop(0)


signal.signal(signal.SIGTERM, stop)
server.wait_for_termination()
