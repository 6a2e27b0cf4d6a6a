from flask.testing import FlaskClient
from tests.web.conftest import Auth

def test_smoke(client: FlaskClient, auth: Auth, ops, token) -> None:
    r = client.get("/")
    assert r.status_code == 302
    assert auth.login().status_code == 302
    for path in ["/", "/listeners", "/listeners/new", "/instances", "/services", "/certificates", "/audit", "/tokens"]:
        r = client.get(path)
        assert r.status_code == 200, (path, r.get_data(as_text=True)[:3000])
    h = token("alice")
    r = client.get("/api/v1/openapi.json", headers=h)
    assert r.status_code == 200, r.get_data(as_text=True)
    r = client.post("/api/v1/listeners", headers=h, json={"name": "web", "load_balancer": "public", "protocol": "TCP", "port": 80, "selector": "app=web", "target_port": 80})
    assert r.status_code == 201, r.get_json()
    print(r.get_json())
    for path in ["/listeners/web", "/listeners/web/edit", "/instances/public", "/listeners/web/status"]:
        r = client.get(path)
        assert r.status_code == 200, (path, r.get_data(as_text=True)[:3000])
