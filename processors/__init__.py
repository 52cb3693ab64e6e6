"""Middle floor: the processor protocol and the built-in processors (pii, detectors, promotion)."""
