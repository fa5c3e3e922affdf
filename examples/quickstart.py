"""The whole idea in a few seconds: start a daemon, send a function and a class to it, call them; then
start Den, log in, and share a function and a secret through it.

Everything it writes (the daemon's token, Den's database and key, the login) goes to a temporary config
folder, deleted at the end, unless RH_CONFIG_DIR says otherwise.
"""

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time

import runhouse as rh


def add(a, b):
    return a + b


def train(epochs, lr=0.1):
    log = logging.getLogger("train")
    for epoch in range(epochs):
        print(f"epoch {epoch}: loss {1 / (epoch + 1):.3f}")
        log.warning("lr is %s", lr)
    return "done"


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value


def main() -> None:
    if os.environ.get("RH_CONFIG_DIR"):
        demo()
        return
    with tempfile.TemporaryDirectory(prefix="rh-demo-") as folder:
        os.environ["RH_CONFIG_DIR"] = folder
        demo()


def demo() -> None:
    began = time.perf_counter()
    port = int(os.environ.get("RH_DEMO_PORT", "32301"))
    cluster = rh.cluster(name="demo", host="localhost", server_port=port)
    cluster.up_if_not()  # starts the daemon on 127.0.0.1 if it is not running
    print(f"1. daemon up on port {port}")

    remote_add = rh.function(add).to(cluster)
    print("2. add(1, 2) on the cluster =", remote_add(1, 2))

    ref = remote_add.remote(10, 20)  # the result stays on the cluster
    print("3. .remote() gave", ref, "; passed on, it is resolved there:", remote_add(ref, 1))
    print("   rh.get(ref) =", rh.get(ref))

    print("4. map over worker processes:", remote_add.map([1, 2, 3], [10, 20, 30]))

    print("5. logs stream back live:")
    print("   result:", rh.function(train).to(cluster)(3, lr=0.01))

    RemoteCounter = rh.module(Counter).to(cluster)
    counter = RemoteCounter(start=5, name="counter")  # a named, stateful instance on the cluster
    counter.increment()
    counter.increment(by=10)
    print("6. remote Counter value:", counter.value, "| same object by name:", cluster.get("counter").value)

    remote_add.save("~/quickstart/add")  # rh/quickstart/add/config.json in this git repo
    reloaded = rh.function(name="~/quickstart/add")  # what a fresh process would do: no redeploy
    print("7. saved and reloaded by name:", reloaded(3, 4), "| versions:", len(reloaded.history()))
    reloaded.delete_configs()

    with den_server() as den_url:
        token = subprocess.run([sys.executable, "-m", "runhouse.cli", "den", "user", "add", "demo", "--url", den_url],
                               check=True, capture_output=True, text=True).stdout.strip()  # with Den's admin token
        user = rh.login(token=token, den_url=den_url)
        remote_add.save("@/quickstart/add")  # now in Den: /demo/quickstart/add, from any machine logged in
        print(f"8. Den on {den_url}, logged in as {user}; add(5, 6) loaded from Den =",
              rh.function(name=f"/{user}/quickstart/add")(5, 6))
        rh.Secrets.put("my-api", secret={"api_key": "not-a-real-key"})  # encrypted at rest in Den
        print("   secrets stored:", rh.Secrets.names(), "| round trip ok:",
              rh.Secrets.get("my-api") == {"api_key": "not-a-real-key"})
        rh.logout()

    cluster.teardown()
    print(f"9. daemon and Den stopped. Whole demo: {time.perf_counter() - began:.1f} s")


class den_server:
    """``runhouse den serve`` on a free port, stopped on exit."""

    def __enter__(self) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.process = subprocess.Popen([sys.executable, "-m", "runhouse.cli", "den", "serve", "--port", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}"
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError("Den did not start within 20 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


if __name__ == "__main__":
    main()
