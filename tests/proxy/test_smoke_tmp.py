from .client import HttpClient, get
from .conftest import Harness

async def test_smoke(proxied: Harness) -> None:
    h = proxied
    bid, token = await h.add_backend()
    r = await get(h.port, f"/{token}/hello?x=1")
    print(r.status, r.headers, r.body[:500])
    assert r.status == 200
    async with await HttpClient.connect(h.port) as c:
        for i in range(5):
            r = await c.request("GET", f"/{token}/x{i}")
            assert r.status == 200, r
        r = await c.request("POST", f"/{token}/post", body=b"abc"*1000)
        print(r.json()["body_len"])
    print("accepts", h.backend.accepts)
