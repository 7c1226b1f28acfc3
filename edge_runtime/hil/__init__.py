"""Hardware-in-the-loop helpers: the firmware emulator and fault injection (not needed at run time)."""
