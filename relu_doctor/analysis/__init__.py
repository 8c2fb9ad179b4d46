"""Analysis: from observed counters to sites, causes, findings, confidence, the gate and the Report."""
