"""Runnable example applications for parrot-gateway (each has ``main(argv) -> dict``)."""
