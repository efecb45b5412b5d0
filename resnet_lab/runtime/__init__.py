"""Where and how a computation runs: the device, torchrun's processes, precision, memory and cores, the one cost and
memory model, and the one evaluation loop."""
