"""The whole idea in a few seconds: start a daemon, send a function and a class to it, call them."""

import logging
import os
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

    cluster.teardown()
    print(f"8. daemon stopped. Whole demo: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
