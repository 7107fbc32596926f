"""Where work runs and how it is written: atomic outputs, locks, progress, devices, executors."""
