"""Engine: request lifecycle (request, scheduler), the decode loop (engine), where it runs (client, process)."""
