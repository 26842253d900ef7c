"""Engine: scheduler (admission), runner (device, tensors), streams (thread to asyncio)."""
