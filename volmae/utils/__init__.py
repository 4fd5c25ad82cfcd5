"""Foundation utilities every layer may use: atomic file writes, devices and precision, distributed processes, the
optimizer, CPU speed levers, yes/no flags. Nothing here imports the rest of volmae but its errors."""
