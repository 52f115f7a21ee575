"""The cuda backend (not built yet)."""


def unavailable():
    return "the cuda backend is not implemented yet"


def unsupported(device, dtype):
    return None
