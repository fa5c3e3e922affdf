"""What ``bench/scale.py`` deploys by import path: a trivial function and a small stateful class."""


def add(a, b):
    return a + b


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value
