"""The ext_proc peer of `make bench-python-mode`: an async Python gRPC server
(grpcio aio) implementing Envoy's ExternalProcessor with the same auth logic
as benchmarks' in-process filter (tests/envoy/python/filterapp.py:auth_app):
`authorization: Bearer ok` -> set x-user: alice and continue; else 401.

Messages are envoy-data-plane's (PyPI; betterproto2 dataclasses).
Usage: python benchmarks/extproc_auth.py PORT   (listens on 127.0.0.1 only)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from envoy_data_plane.envoy.config.core.v3 import HeaderValue, HeaderValueOption
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    ImmediateResponse,
    ProcessingRequest,
    ProcessingResponse,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

ALLOW = bytes(
    ProcessingResponse(
        request_headers=HeadersResponse(
            response=CommonResponse(
                header_mutation=HeaderMutation(
                    set_headers=[
                        HeaderValueOption(header=HeaderValue(key="x-user", raw_value=b"alice"))
                    ]
                )
            )
        )
    )
)


def deny() -> ProcessingResponse:
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=StatusCode.Unauthorized),
            body=b"denied",
            headers=HeaderMutation(
                set_headers=[
                    HeaderValueOption(
                        header=HeaderValue(key="www-authenticate", raw_value=b"Bearer")
                    )
                ]
            ),
        )
    )


async def process(
    requests: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for req in requests:
        headers = req.request_headers
        if headers is None:  # only request headers are sent (processing_mode)
            yield bytes(ProcessingResponse())
            continue
        auth = None
        for h in headers.headers.headers if headers.headers else ():
            if h.key == "authorization":
                auth = h.raw_value or h.value.encode()
                break
        yield ALLOW if auth == b"Bearer ok" else bytes(deny())


async def main(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        process,
        request_deserializer=ProcessingRequest.parse,
        response_serializer=lambda b: b,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.ext_proc.v3.ExternalProcessor", {"Process": handler}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    # grpc.aio runs on the default asyncio loop (it does not support uvloop)
    asyncio.run(main(int(sys.argv[1])))
