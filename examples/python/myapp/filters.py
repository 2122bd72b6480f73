"""The example Envoy HTTP filter app: auth in front of an upstream, response stamping.

    aioresty envoy filter-config myapp.filters:app --listen 127.0.0.1:8000 \
        --upstream 127.0.0.1:8080
"""

import aioresty

app = aioresty.App(timeout=2.0)


@app.on_request
async def auth(req: aioresty.FilterRequest) -> aioresty.Response | None:
    if req.headers.get("authorization") != "Bearer ok":
        return aioresty.Response(401, b"denied\n", headers={"www-authenticate": "Bearer"})
    req.headers["x-user"] = "alice"  # applied, then the request continues upstream
    return None


@app.on_response
async def stamp(resp: aioresty.FilterResponse) -> None:
    resp.headers["x-served-by"] = "aioresty"
